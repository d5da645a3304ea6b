"""Links into the MLflow UI that open a study's runs list in "Model training" mode.

MLflow 3.17's UI keeps its mode (GenAI or Model training) in the browser, GenAI by
default: a fresh browser opens an experiment on its traces overview, where trial runs are
nowhere to be seen. The URL query `workflowType=machine_learning` overrides that setting,
so every link tunetrack prints or documents carries it and points at the runs list
(`#/experiments/ID/runs`). The experiment tag `mlflow.experimentKind` (set where the
experiment is created, `client.get_or_create_experiment`) alone does not change what a
fresh browser shows.

MLflow's runs list folds child runs under their parent ("Expand rows") whenever it is
sorted by creation time, and then also fetches the parent of every child a filter lists;
sorted by any other key it shows each run as a row of its own. (The shared-view mechanism,
`viewStateShareKey`, drops any expanded rows it is given.) So a study's link filters the
list to that study's trial runs (`tunetrack.study` and `tunetrack.role` tags) and sorts
them by `best_val_accuracy`, best first: the trials open as rows, ready to tick and
compare; clearing the filter shows the parent run with the study's plots.

Nothing here imports MLflow: the experiment id is read straight from a SQLite store or
asked of a server over plain HTTP, so printing a link costs milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..tags import ROLE, ROLE_TRIAL, STUDY
from .redaction import redact
from .sqlite import sqlite_path
from .uri import resolve_tracking_uri, scheme_of

UI_QUERY = "workflowType=machine_learning"
TRIALS_ORDER = "metrics.`best_val_accuracy`"  # logged by every trial that ran an epoch
UI_HOST = "127.0.0.1"
UI_PORT = 5000


def ui_url(base: str, experiment_id: str | None = None, study: str | None = None) -> str:
    """The runs list of experiment `experiment_id` (the experiments list without one) on
    the MLflow UI at `base`, in Model training mode; with `study`, that study's trial
    runs, best first, each a row (not folded under the parent run)."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{UI_QUERY}"
    query = UI_QUERY
    if study is not None:
        query += "&" + urllib.parse.urlencode(
            {"searchFilter": trials_filter(study), "orderByKey": TRIALS_ORDER,
             "orderByAsc": "false"}, quote_via=urllib.parse.quote)
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def trials_filter(study: str) -> str:
    """MLflow search filter for the trial runs of `study` (study names are letters,
    digits, `.`, `_` and `-`: nothing to quote)."""
    return f"tags.`{STUDY}` = '{study}' AND tags.`{ROLE}` = '{ROLE_TRIAL}'"


def experiment_id(tracking_uri: str, name: str, *, timeout: float = 3.0) -> str | None:
    """Id of the experiment called `name` in the store, or None when unknown (no such
    experiment, a store kind read only through MLflow, or an error: a link without the id
    still works, so this never raises)."""
    scheme = scheme_of(tracking_uri)
    if scheme == "sqlite":
        return _sqlite_experiment_id(tracking_uri, name)
    if scheme in ("http", "https"):
        return _http_experiment_id(tracking_uri, name, timeout)
    return None


def _sqlite_experiment_id(tracking_uri: str, name: str) -> str | None:
    db = sqlite_path(tracking_uri)
    if db is None or not db.is_file():
        return None
    with contextlib.suppress(sqlite3.Error), contextlib.closing(
            sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)) as connection:
        row = connection.execute(
            "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = "
            "'active'", (name,)).fetchone()
        return None if row is None else str(row[0])
    return None


def _http_experiment_id(tracking_uri: str, name: str, timeout: float) -> str | None:
    query = urllib.parse.urlencode({"experiment_name": name})
    url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    found = answer.get("experiment", {}).get("experiment_id")
    return None if found is None else str(found)


@dataclass(frozen=True)
class UiHint:
    """How to see an experiment in the MLflow UI: `command` starts a UI for a store that
    has none (None for a tracking server, which is its own UI), `url` is what to open."""

    command: str | None
    url: str


def ui_hint(tracking_uri: str | None, experiment: str, *, mlflow: str = "mlflow",
            study: str | None = None) -> UiHint:
    """The UI for `experiment` in the store `tracking_uri` (resolved as every command
    does), on `study`'s trial runs when it is given. A server's own address is the link;
    any other store needs `mlflow ui` on 127.0.0.1:5000 first, spelled with `mlflow` (e.g.
    `.venv/bin/mlflow` for a shell without the venv) and the store as short as the current
    folder allows."""
    uri = resolve_tracking_uri(tracking_uri)
    found = experiment_id(uri, experiment)
    if scheme_of(uri) in ("http", "https"):
        return UiHint(None, ui_url(redact(uri), found, study))
    command = (f"{mlflow} ui --backend-store-uri {_shown_store(uri)} --host {UI_HOST} "
               f"--port {UI_PORT}")
    return UiHint(command, ui_url(f"http://{UI_HOST}:{UI_PORT}", found, study))


def _shown_store(uri: str) -> str:
    """`sqlite:///mlflow.db` for a database in the current folder (what the README says),
    else the whole URI without its password."""
    db = sqlite_path(uri)
    if db is not None and "?" not in uri:
        with contextlib.suppress(ValueError):
            return "sqlite:///" + db.relative_to(Path.cwd()).as_posix()
    return redact(uri)
