"""What the sidecar process does for a trial's MLflow run (see `sidecar.py`).

The parent names a run by a token it makes up, so it never waits for `create_run`; this
module maps tokens to MLflow run ids. Tasks of one run arrive in order. A completed trial's
files and model are made on the sidecar's slow lane (`in_background`), and a run whose
slow work is still queued is ended after it, by the slow lane. When creating or
writing a run fails (e.g. the tracking server went away), the rest of that run's tasks
are skipped, except `end_run`, which is still tried so no run stays RUNNING for a blip
that has passed; the failure itself was reported once by the parent's sidecar handle.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tags as T
from .sidecar import before_drain

_log = logging.getLogger(__name__)
_MAX_METRICS, _MAX_PARAMS = 1000, 100  # MLflow's log_batch limits


@dataclass
class _Run:
    run_id: str
    artifact_uri: str
    monitor: Any = None  # mlflow SystemMetricsMonitor
    broken: bool = False  # a write failed: skip the rest of this run's data
    slow_jobs: int = 0  # slow-lane jobs queued and not finished
    end_after: tuple[str, str] | None = None  # (state, reason) once they are
    ended: threading.Event = field(default_factory=threading.Event)


_RUNS: dict[str, _Run] = {}
_LOCK = threading.Lock()  # slow_jobs / end_after, shared by the two lanes


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
    # the helper only runs a few images through each model (feature maps, the model's
    # signature): oneDNN would keep ~1 MB of kernels per distinct layer shape for good
    torch.backends.mkldnn.enabled = False


def _guarded(run: _Run | None, write) -> Any:
    """Run `write(run)` unless the run is missing or broken; mark it broken if it fails."""
    if run is None or run.broken:
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
               system_metrics_s: float | None, made: tuple[str, str] | None = None,
               datasets: list | None = None) -> str:
    """Create the child run (or adopt `made`, the (run id, artifact URI) of one the parent
    created itself) with its params and `trial.yaml`; return the run id."""
    from mlflow.entities import Param

    client = _client(uri)
    if made is None:
        info = client.create_run(experiment_id, run_name=run_name, tags=tags).info
        made = (info.run_id, info.artifact_uri)
    run = _RUNS[token] = _Run(*made, broken=True)  # until written
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), _MAX_PARAMS):
        client.log_batch(run.run_id, params=items[start:start + _MAX_PARAMS],
                         synchronous=True)
    if datasets:  # the splits as dataset inputs (tracking/datasets.py)
        client.log_inputs(run.run_id, datasets=datasets)
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


def log_metrics(uri: str, token: str, rows: list[tuple[str, float, int, int]]) -> None:
    """One `log_batch` of (key, value, timestamp ms, step) rows."""
    _guarded(_RUNS.get(token), lambda run: _write_metrics(uri, run, rows))


def _write_metrics(uri: str, run: _Run, rows: list[tuple[str, float, int, int]], *,
                   tags: dict[str, str] | None = None, model_id: str | None = None) -> None:
    from mlflow.entities import Metric, RunTag

    metrics = [Metric(k, float(v), stamp, step, model_id=model_id) for k, v, stamp, step in rows]
    run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
    for start in range(0, max(len(metrics), 1), _MAX_METRICS):
        _client(uri).log_batch(run.run_id, metrics=metrics[start:start + _MAX_METRICS],
                               tags=run_tags if start == 0 else [], synchronous=True)


def log_completed(uri: str, token: str, done: Any, *, experiment_id: str, study_name: str,
                  trial_number: int) -> None:
    """Queue (on the slow lane) tables, figures and, per `done.log_model`, the model of a
    completed trial, then its final metrics. `done` is a `trial_artifacts.CompletedTrial`.

    A model with `done.hold_model` (policy `best`, one objective) is held back instead: a
    later, better trial of the study replaces it, and the one held at the next drain (the
    study's end, `promote`, `compare`) is logged. Exporting the model is the dearest part
    of tracking (~0.6 s), and early in a study nearly every completed trial is a new best.
    """
    from .sidecar import in_background
    from .trial_artifacts import write_trial_artifacts

    run = _RUNS.get(token)
    if run is None or run.broken:
        return
    meta = _ModelOwner(uri, run, done, experiment_id, study_name, trial_number)

    def write(run: _Run) -> None:
        with tempfile.TemporaryDirectory(prefix="tunetrack-trial-") as tmp:
            write_trial_artifacts(Path(tmp), done)
            upload(uri, run.artifact_uri, Path(tmp))
        if done.log_model and not done.hold_model:
            meta.log_model()  # writes the final metrics, carrying the model's id
            return
        meta.write_final_metrics()
        if done.log_model:
            with _LOCK:
                _HELD[(uri, study_name)] = meta

    def job() -> None:
        try:
            _guarded(run, write)
        finally:
            with _LOCK:
                run.slow_jobs -= 1
                pending_end = run.end_after if run.slow_jobs == 0 else None
            if pending_end is not None:
                _end(uri, token, run, *pending_end)

    with _LOCK:
        run.slow_jobs += 1
    in_background(job)


@dataclass
class _ModelOwner:
    """A completed trial whose model is to be logged (now, or when held, at a drain)."""

    uri: str
    run: _Run
    done: Any  # trial_artifacts.CompletedTrial
    experiment_id: str
    study_name: str
    trial_number: int

    def log_model(self) -> None:
        from .model_io import FORMAT_TAG, log_pytorch_model

        done, run = self.done, self.run
        model_id, fmt = log_pytorch_model(
            _client(self.uri), run_id=run.run_id, experiment_id=self.experiment_id,
            model=done.model, example=done.images, metadata={
                "classes": list(done.classes), "input_shape": list(done.input_shape),
                "data_fingerprint": done.data_fingerprint, "study": self.study_name,
                "trial": self.trial_number, "run_id": run.run_id},
            tags={T.STUDY: self.study_name, T.TRIAL: str(self.trial_number)})
        # the final metrics carry the model id: they show on the model's page too (for a
        # held model this writes them a second time, now with the id)
        self.write_final_metrics({T.MODEL_ID: model_id, FORMAT_TAG: fmt}, model_id)

    def write_final_metrics(self, tags: dict[str, str] | None = None,
                            model_id: str | None = None) -> None:
        """The completed trial's final metrics, its stop reason and `tags`, at step 0."""
        stamp = int(time.time() * 1000)
        _write_metrics(self.uri, self.run,
                       [(k, v, stamp, 0) for k, v in self.done.values.items()],
                       tags={T.STOP_REASON: self.done.stop_reason, **(tags or {})},
                       model_id=model_id)


_HELD: dict[tuple[str, str], _ModelOwner] = {}  # (store, study) -> its best trial so far


def _log_held_models() -> None:
    """Drain hook: log the held best models, on the slow lane after the jobs queued before
    (one of which may hold a new best)."""
    from .sidecar import in_background

    def log_them() -> None:
        with _LOCK:
            held = list(_HELD.values())
            _HELD.clear()
        for owner in held:
            owner.log_model()

    in_background(log_them)


def end_run(uri: str, token: str, state: str, reason: str) -> None:
    """Tag the Optuna state and reason, stop the system metrics, end the run: now, or
    after the run's slow-lane jobs when some are still queued."""
    run = _RUNS.get(token)
    if run is None:
        return  # never created; that failure was reported
    with _LOCK:
        if run.slow_jobs:
            run.end_after = (state, reason)
            return
    _end(uri, token, run, state, reason)


def _end(uri: str, token: str, run: _Run, state: str, reason: str) -> None:
    from mlflow.entities import RunTag

    try:
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
    finally:
        _RUNS.pop(token, None)
        run.ended.set()


def wait_ended(uri: str, token: str, timeout: float = 300.0) -> None:
    """Return once the run has ended (its slow-lane jobs included)."""
    run = _RUNS.get(token)
    if run is not None:
        run.ended.wait(timeout)


before_drain(_log_held_models)
