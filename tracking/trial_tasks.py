"""What the sidecar process does for a trial's MLflow run (see `sidecar.py`).

The parent names a run by a token it makes up, so it never waits for `create_run`; this
module maps tokens to MLflow run ids. Tasks of one run arrive in order. When creating or
writing a run fails (e.g. the tracking server went away), the rest of that run's tasks
are skipped, except `end_run`, which is still tried so no run stays RUNNING for a blip
that has passed; the failure itself was reported once by the parent's sidecar handle.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import tags as T

_log = logging.getLogger(__name__)
_MAX_METRICS = 1000  # MLflow's log_batch limit


@dataclass
class _Run:
    run_id: str
    artifact_uri: str
    monitor: Any = None  # mlflow SystemMetricsMonitor
    broken: bool = False  # a write failed: skip the rest of this run's data


_RUNS: dict[str, _Run] = {}


def _client(uri: str):
    from .client import client_for

    return client_for(uri)


def warm_up() -> None:
    """Import what the tasks need, ahead of the first trial's run. The store itself is not
    opened here: the study's process may be creating its tables right now, and two
    processes migrating one new SQLite database collide."""
    import matplotlib.pyplot  # noqa: F401
    import mlflow.pytorch  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch

    from . import client, figures, model_io  # noqa: F401

    torch.set_num_threads(1)


def _live(token: str) -> _Run | None:
    run = _RUNS.get(token)
    return None if run is None or run.broken else run


def _guarded(token: str, write) -> Any:
    """Run `write(run)` for a live run; mark the run broken if it fails."""
    run = _live(token)
    if run is None:
        return None
    try:
        return write(run)
    except Exception:
        run.broken = True
        raise


def upload(uri: str, artifact_uri: str, folder: Path) -> None:
    """Upload a folder's files (or one file) straight to the run's artifact repository.

    `MlflowClient.log_artifact(s)` would first re-read the whole run from the store just to
    learn its artifact URI.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(artifact_uri, tracking_uri=uri)
    if folder.is_dir():
        repo.log_artifacts(str(folder))
    else:
        repo.log_artifact(str(folder))


def create_run(uri: str, token: str, *, experiment_id: str, run_name: str,
               tags: dict[str, str], params: dict[str, str], trial_yaml: str,
               system_metrics_s: float | None) -> str:
    """Create the child run with its params and `trial.yaml`; return the run id."""
    from mlflow.entities import Param

    client = _client(uri)
    info = client.create_run(experiment_id, run_name=run_name, tags=tags).info
    run = _RUNS[token] = _Run(info.run_id, info.artifact_uri, broken=True)  # until written
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.run_id, params=items[start:start + 100], synchronous=True)
    with tempfile.TemporaryDirectory(prefix="tunetrack-trial-") as tmp:
        path = Path(tmp) / "trial.yaml"
        path.write_text(trial_yaml)
        upload(uri, run.artifact_uri, path)
    if system_metrics_s:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        run.monitor = SystemMetricsMonitor(run.run_id, sampling_interval=system_metrics_s,
                                           tracking_uri=uri)
        run.monitor.start()
    run.broken = False
    return run.run_id


def log_metrics(uri: str, token: str, rows: list[tuple[str, float, int, int]],
                tags: dict[str, str] | None = None, model_id: str | None = None) -> None:
    """One `log_batch` of (key, value, timestamp ms, step) rows, plus tags."""
    from mlflow.entities import Metric, RunTag

    def write(run: _Run) -> None:
        metrics = [Metric(k, float(v), stamp, step, model_id=model_id)
                   for k, v, stamp, step in rows]
        run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        for start in range(0, max(len(metrics), 1), _MAX_METRICS):
            _client(uri).log_batch(run.run_id, metrics=metrics[start:start + _MAX_METRICS],
                                   tags=run_tags if start == 0 else [], synchronous=True)

    _guarded(token, write)


def log_completed(uri: str, token: str, done: Any, *, experiment_id: str, study_name: str,
                  trial_number: int) -> str | None:
    """Tables, figures and (per `done.log_model`) the model of a completed trial, then its
    final metrics; returns the LoggedModel id, if a model was logged. `done` is a
    `trial_artifacts.CompletedTrial`."""
    from .trial_artifacts import write_trial_artifacts

    def write(run: _Run) -> str | None:
        with tempfile.TemporaryDirectory(prefix="tunetrack-trial-") as tmp:
            write_trial_artifacts(Path(tmp), done)
            upload(uri, run.artifact_uri, Path(tmp))
        tags = {T.STOP_REASON: done.stop_reason}
        model_id = None
        if done.log_model:
            from .model_io import FORMAT_TAG, log_pytorch_model

            model_id, fmt = log_pytorch_model(
                _client(uri), run_id=run.run_id, experiment_id=experiment_id,
                model=done.model, example=done.images, metadata={
                    "classes": list(done.classes), "input_shape": list(done.input_shape),
                    "data_fingerprint": done.data_fingerprint, "study": study_name,
                    "trial": trial_number, "run_id": run.run_id},
                tags={T.STUDY: study_name, T.TRIAL: str(trial_number)})
            tags.update({T.MODEL_ID: model_id, FORMAT_TAG: fmt})
        stamp = int(time.time() * 1000)
        # metrics carrying the model id also show on the LoggedModel's page
        log_metrics(uri, token, [(k, v, stamp, 0) for k, v in done.values.items()],
                    tags=tags, model_id=model_id)
        return model_id

    return _guarded(token, write)


def end_run(uri: str, token: str, state: str, reason: str) -> None:
    """Tag the Optuna state and reason, stop the system metrics, end the run."""
    from mlflow.entities import RunTag

    run = _RUNS.pop(token, None)
    if run is None:
        return  # never created; that failure was reported
    if run.monitor is not None:
        try:
            run.monitor.finish()
        except Exception as exc:  # never keep the run from ending
            _log.warning("system metrics of run %s: %s", run.run_id, exc)
    client = _client(uri)
    client.log_batch(run.run_id, tags=[RunTag(T.OPTUNA_STATE, state),
                                       RunTag(T.OPTUNA_REASON, T.clip(reason))],
                     synchronous=True)
    client.set_terminated(run.run_id, T.RUN_STATUS[state])
