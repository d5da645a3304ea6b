"""One `MlflowClient` per store, experiments created where their artifacts belong, and a
run ended with its Optuna state.

Every call passes run ids explicitly: the fluent API's global active run is never used, so
parallel trials (threads or processes) cannot log into each other's runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import threading
from collections.abc import Iterator

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tunetrack.models import TunetrackError
from tunetrack.models.errors import first_line

from .. import tags as T
from .redaction import redact
from .sqlite import sqlite_path, use_wal
from .uri import check_reachable, resolve_tracking_uri


@functools.lru_cache(maxsize=8)
def client_for(tracking_uri: str) -> MlflowClient:
    """Cached client; the registry lives in the same store unless MLFLOW_REGISTRY_URI says.
    A SQLite store is opened in WAL mode (`uri.use_wal`)."""
    registry = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
    for uri in {tracking_uri, registry}:
        db = sqlite_path(uri)
        if db is not None:
            use_wal(db)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry)


def open_client(tracking_uri: str | None = None, *, check: bool = True,
                must_exist: bool = False) -> tuple[str, MlflowClient]:
    """(resolved URI, its client) for reading a study back: checked first unless `check`
    is False (`check_reachable`: a dead server fails in one line, not after MLflow's
    minutes of retries). `must_exist`: a missing SQLite file is an error too, since asking
    MLflow would create an empty store."""
    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if must_exist and db is not None and not db.exists():
        raise TunetrackError(f"no MLflow store at {redact(uri)}; pass --tracking-uri (or set "
                             f"MLFLOW_TRACKING_URI) to the store the study logged to")
    if check:
        check_reachable(uri)
    return uri, client_for(uri)


_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: str | None = None


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """No tqdm bars while MLflow downloads a few small files (restored afterwards; a
    user's own setting of the variable wins)."""
    global _quiet_depth, _quiet_saved
    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = os.environ.get(_PROGRESS_BAR)
            if _quiet_saved is None:
                os.environ[_PROGRESS_BAR] = "false"
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_saved is None:
                os.environ.pop(_PROGRESS_BAR, None)


def error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", ""))


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a local SQLite store go next to the database, not into the cwd.

    MLflow's default artifact root for SQLite is `./mlruns` of whatever folder the process
    runs in, which scatters one study's artifacts when workers start from different
    folders. Servers and other stores keep their own default (None).
    """
    db = sqlite_path(tracking_uri)
    if db is None:
        return None
    slug = experiment
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,80}", experiment):
        digest = hashlib.blake2b(experiment.encode(), digest_size=4).hexdigest()
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)[:60].strip("_.") + "-" + digest
    return (db.parent / "mlruns" / slug).as_uri()


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Id of the experiment called `name`, created if missing (safe when workers race),
    tagged as model training (`T.EXPERIMENT_KIND`) so MLflow never guesses GenAI for it."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(
                tracking_uri, name), tags={T.EXPERIMENT_KIND: T.EXPERIMENT_KIND_TRAINING})
        except MlflowException as exc:
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise TunetrackError(f"cannot create MLflow experiment {name!r}: "
                                     f"{first_line(exc)}") from None
            experiment = client.get_experiment_by_name(name)  # another worker was faster
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TunetrackError(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted; restore it "
            f"with `mlflow experiments restore --experiment-id {experiment.experiment_id}` or "
            f"choose another tracking.experiment"
        )
    if experiment.tags.get(T.EXPERIMENT_KIND) is None:  # made before the tag, or by hand
        client.set_experiment_tag(experiment.experiment_id, T.EXPERIMENT_KIND,
                                  T.EXPERIMENT_KIND_TRAINING)
    return experiment.experiment_id


def end_run(client: MlflowClient, run_id: str, state: str, reason: str) -> None:
    """Tag `optuna.state`/`optuna.reason` and end the run FINISHED / KILLED / FAILED."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(T.OPTUNA_STATE, state),
                                   RunTag(T.OPTUNA_REASON, T.clip(reason))], synchronous=True)
    client.set_terminated(run_id, T.RUN_STATUS[state])
