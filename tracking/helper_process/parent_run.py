"""The study's one parent run, **shared** by every worker process of a study: found by its
tags (`tunetrack.study`, `tunetrack.role=parent`), remembered in the study's user attribute
`mlflow_parent_run_id`. Find-or-create runs under a lock (a lock file for a local SQLite
store); workers of a remote store that still race each create a parent, look again (twice,
0.5 s apart), keep the earliest and delete their own duplicate.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from .. import tags as T
from ..store import client_for, file_lock, sqlite_path
from .lanes import StudyState

PARENT_SETTLE_S = 0.5  # remote stores: second look for a rival parent run after this


def find_or_create(state: StudyState, experiment: str, directions: str,
                   remembered: str | None) -> str:
    """The parent run's id: the `remembered` one while it is still this study's, else the
    earliest found, else a new one."""
    parent = usable_parent(state, remembered) if remembered else None
    if parent is None:
        with parent_lock(state.uri, experiment, state.name):
            found = find_parents(state)
            parent = found[0] if found else create_parent(state, directions)
    return parent


def usable_parent(state: StudyState, run_id: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        run = client_for(state.uri).get_run(run_id)
    except MlflowException:
        return None  # e.g. the study outlived its mlflow.db
    ok = (run.info.experiment_id == state.experiment_id
          and run.info.lifecycle_stage == "active"
          and run.data.tags.get(T.STUDY) == state.name
          and run.data.tags.get(T.ROLE) == T.ROLE_PARENT)
    return run_id if ok else None


def find_parents(state: StudyState) -> list[str]:
    """Active parent runs of this study, earliest first (the study tag is compared here,
    not in the filter, so any study name works without quoting rules)."""
    runs = client_for(state.uri).search_runs(
        [state.experiment_id], filter_string=f"tags.`{T.ROLE}` = '{T.ROLE_PARENT}'",
        max_results=1000)
    mine = [r for r in runs if r.data.tags.get(T.STUDY) == state.name]
    mine.sort(key=lambda r: (r.info.start_time, r.info.run_id))
    return [r.info.run_id for r in mine]


def create_parent(state: StudyState, directions: str) -> str:
    client = client_for(state.uri)
    mine = client.create_run(state.experiment_id, run_name=state.name, tags={
        T.STUDY: state.name, T.ROLE: T.ROLE_PARENT, T.OPTUNA_STUDY: state.name,
        T.OPTUNA_DIRECTIONS: directions, **T.runtime_tags()}).info.run_id
    keep = mine
    # workers on other hosts may have raced past the lock: all keep the earliest; a
    # second look after a pause catches a rival whose insert committed late
    for pause in (0.0,) if sqlite_path(state.uri) else (0.0, PARENT_SETTLE_S):
        time.sleep(pause)
        found = find_parents(state)
        keep = found[0] if found else mine
        if keep != mine:
            client.delete_run(mine)
            break
    return keep


@contextlib.contextmanager
def parent_lock(uri: str, experiment: str, study_name: str) -> Iterator[None]:
    """Serialise find-or-create of the parent between processes of a local SQLite store
    (a lock file beside the artifacts); remote stores rely on `create_parent`'s re-check.
    The helper handles one message at a time, so threads need no lock."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    import hashlib

    name = hashlib.blake2b(repr((uri, experiment, study_name)).encode(),
                           digest_size=6).hexdigest()
    path = db.parent / "mlruns" / f".parent-{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path):
        yield
