"""The MLflow child run of one Optuna trial: per-epoch metrics, final report, end state.

Made by `StudyTracker.start_trial`. It is the trainer's `EpochCallback`: `on_epoch_end`
only queues one batch of metrics (see `background.py`) and never stops training; pruning
is the objective's business.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import tags as T
from .background import QUEUE

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tunetrack.models import Classifier, EpochResult, Evaluation, FitResult, Splits

_log = logging.getLogger(__name__)
EXAMPLE_IMAGES = 5  # > 1 so the exported model keeps a dynamic batch dimension


class TrialRun:
    """Explicit-run-id logging for one trial; safe to use from several threads at once."""

    def __init__(self, client: MlflowClient, run_id: str, *, experiment_id: str,
                 artifact_uri: str, study_name: str, trial_number: int, log_models: str,
                 trial: Any = None, monitor: Any = None):
        self._client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self.experiment_id = experiment_id
        self.study_name = study_name
        self.trial_number = trial_number
        self.log_models = log_models
        self.model_id: str | None = None
        self._trial = trial
        self._monitor = monitor  # mlflow SystemMetricsMonitor, when asked for
        self._ended = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TrialRun(trial={self.trial_number}, run_id={self.run_id!r})"

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None:
            self.end("COMPLETE")
        else:
            self.end("FAIL", f"{type(exc).__name__}: {exc}")

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Upload a folder's files (or one file) to the run.

        Goes straight to the run's artifact repository: `MlflowClient.log_artifact(s)`
        would first re-read the whole run from the store just to learn its artifact URI.
        """
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(self.artifact_uri, tracking_uri=self._client.tracking_uri)
        folder = Path(folder)
        if folder.is_dir():
            repo.log_artifacts(str(folder), artifact_path)
        else:
            repo.log_artifact(str(folder), artifact_path)

    def on_epoch_end(self, result: EpochResult) -> bool:
        """Queue this epoch's metrics with `step=epoch` (one log_batch); never stops."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        QUEUE.submit(self._client, self.run_id, metrics=[
            Metric(key, float(value), stamp, result.epoch)
            for key, value in result.metrics().items()])
        return False

    def _wants_model(self, log_model: bool) -> bool:
        """`log_models` policy: all -> always, none -> never, best -> when the caller says."""
        return self.log_models == "all" or (self.log_models == "best" and log_model)

    def log_completed(self, *, model: Classifier, splits: Splits, test_eval: Evaluation,
                      fit: FitResult, log_model: bool) -> None:
        """Final metrics, report, tables and figures (one upload) and maybe the model.

        Files and the model are written before this returns; the final metrics and tags
        go through the background writer (`end` flushes). `log_model` is the caller's
        verdict "this trial is the best so far" (see `StudyTracker.wants_model`); the
        `log_models` policy has the last word.
        """
        from mlflow.entities import Metric, RunTag

        from tunetrack.models import classification_metrics, count_parameters

        from .trial_artifacts import write_trial_artifacts

        report = classification_metrics(splits.test, test_eval.predictions, splits.classes)
        with tempfile.TemporaryDirectory(prefix="tunetrack-trial-") as tmp:
            write_trial_artifacts(Path(tmp), splits=splits, test_eval=test_eval, fit=fit,
                                  report=report)
            self.log_artifacts(tmp)

        extra_tags = {T.STOP_REASON: fit.stop_reason}
        if self._wants_model(log_model):
            from .model_io import FORMAT_TAG, log_pytorch_model

            example = splits.test.x[:EXAMPLE_IMAGES].cpu().float().numpy()
            self.model_id, fmt = log_pytorch_model(
                self._client, run_id=self.run_id, experiment_id=self.experiment_id,
                model=model, example=example, metadata={
                    "classes": list(splits.classes), "input_shape": list(splits.input_shape),
                    "data_fingerprint": splits.fingerprint, "study": self.study_name,
                    "trial": self.trial_number, "run_id": self.run_id},
                tags={T.STUDY: self.study_name, T.TRIAL: str(self.trial_number)})
            extra_tags.update({T.MODEL_ID: self.model_id, FORMAT_TAG: fmt})

        values = {"test_accuracy": test_eval.accuracy, "test_loss": test_eval.loss,
                  "epochs_run": fit.epochs_run, "param_count": count_parameters(model),
                  "train_seconds": sum(h.epoch_seconds for h in fit.history)}
        if fit.best is not None:
            best = fit.best
            values.update(best_epoch=best.epoch, best_val_accuracy=best.val_accuracy,
                          best_val_loss=best.val_loss, best_train_accuracy=best.train_accuracy,
                          best_train_loss=best.train_loss)
        stamp = int(time.time() * 1000)
        # metrics carrying the model id also show on the LoggedModel's page
        metrics = [Metric(k, float(v), stamp, 0, model_id=self.model_id)
                   for k, v in values.items()]
        QUEUE.submit(self._client, self.run_id, metrics=metrics,
                     tags=[RunTag(k, str(v)) for k, v in extra_tags.items()])
        if self._trial is not None:
            self._trial.set_user_attr(T.ATTR_TEST_ACCURACY, test_eval.accuracy)
            self._trial.set_user_attr(T.ATTR_EPOCHS_RUN, fit.epochs_run)

    def end(self, state: str, reason: str = "", *, wait: bool = True) -> None:
        """Tag `optuna.state`/`optuna.reason`, flush, end the run FINISHED/KILLED/FAILED.

        Idempotent. `wait=True` returns once the queued metrics/tags and the end are
        written. `wait=False` leaves that to the background thread, overlapping it with
        the next trial (`finish_study`, `promote`, `compare_trials` and interpreter exit
        flush). A failure to write is logged, not raised: `end` runs in `finally` blocks
        and must not hide the trial's own exception.
        """
        from mlflow.entities import RunTag

        state = state.upper()
        if state not in T.RUN_STATUS:
            raise ValueError(f"state must be one of {', '.join(T.RUN_STATUS)} but got {state!r}")
        with self._lock:
            if self._ended:
                return
            self._ended = True
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as exc:  # never keep the run from ending
                _log.warning("system metrics monitor of run %s: %s", self.run_id, exc)
        QUEUE.submit(self._client, self.run_id, tags=[
            RunTag(T.OPTUNA_STATE, state), RunTag(T.OPTUNA_REASON, T.clip(reason))],
            terminate=T.RUN_STATUS[state])
        if not wait:
            return
        try:
            QUEUE.flush(self.run_id)
        except Exception as exc:
            _log.warning("some MLflow data of trial %s (run %s) was not written: %s",
                         self.trial_number, self.run_id, exc)
