"""The MLflow child run of one Optuna trial, as the trial's process sees it.

Made by `StudyTracker.start_trial`. Every write is a task for the sidecar process
(`sidecar.py`, `trial_tasks.py`): the trial only collects small, picklable data and goes
on. It is the trainer's `EpochCallback`: `on_epoch_end` queues one batch of metrics and
never stops training; pruning is the objective's business.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from . import tags as T
from . import trial_tasks
from .sidecar import SIDECAR

if TYPE_CHECKING:
    from tunetrack.models import EpochResult, Evaluation, FitResult, Splits

_log = logging.getLogger(__name__)
CREATE_TIMEOUT_S = 300.0  # a trial waits this long, at most, to learn its run id
METRICS_EVERY_S = 1.0  # epochs faster than this share one log_batch (fewer store commits)


class TrialRun:
    """Handle of one trial's run; the run itself is created in the sidecar.

    The Optuna trial gets user attr `mlflow_run_id` as soon as the run exists (checked at
    every epoch end, and waited for at `end`, which the objective calls before Optuna
    records the trial's state).
    """

    def __init__(self, *, tracking_uri: str, token: str, created: cf.Future,
                 run_id: str | None = None, experiment_id: str, study_name: str,
                 trial_number: int, log_models: str, hold_best: bool = False,
                 trial: Any = None):
        self.tracking_uri = tracking_uri
        self.token = token
        self.experiment_id = experiment_id
        self.study_name = study_name
        self.trial_number = trial_number
        self.log_models = log_models
        self.hold_best = hold_best  # a `best` model waits until the study's end (trial_tasks)
        self._created = created
        self._run_id = run_id  # known at once when the parent created the run itself
        self._trial = trial
        self._linked = trial is None
        self._last: cf.Future = created
        self._rows: list[tuple[str, float, int, int]] = []  # epoch metrics not yet sent
        self._sent_at = 0.0
        self._ended = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TrialRun(trial={self.trial_number}, token={self.token!r})"

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None:
            self.end("COMPLETE")
        else:
            self.end("FAIL", f"{type(exc).__name__}: {exc}")

    @property
    def run_id(self) -> str:
        """The MLflow run id (waits for the sidecar to have created the run)."""
        if self._run_id is None:
            self._run_id = self._created.result(timeout=CREATE_TIMEOUT_S)
        return self._run_id

    @property
    def create_error(self) -> BaseException | None:
        """Why the sidecar could not create this run (None while pending or fine)."""
        if self._run_id is not None or not self._created.done():
            return None
        return self._created.exception()

    def _submit(self, task: Any, *args: Any, **kwargs: Any) -> None:
        self._last = SIDECAR.submit(task, self.tracking_uri, self.token, *args, **kwargs)

    def _link(self, wait: bool) -> None:
        """Write the run id into the Optuna trial once it is known."""
        if self._linked or not (wait or self._run_id or self._created.done()):
            return
        self._linked = True
        try:
            run_id = self.run_id
        except Exception:  # creating the run failed; the sidecar has said why
            return
        self._trial.set_user_attr(T.ATTR_RUN_ID, run_id)

    def on_epoch_end(self, result: EpochResult) -> bool:
        """Queue this epoch's metrics with `step=epoch`; never stops. Epochs quicker than
        METRICS_EVERY_S are sent together (the UI's curves lag by that much at most)."""
        stamp = int(time.time() * 1000)
        self._rows += [(key, float(value), stamp, result.epoch)
                       for key, value in result.metrics().items()]
        if time.monotonic() - self._sent_at >= METRICS_EVERY_S:
            self._send_metrics()
        self._link(wait=False)
        return False

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Queue metrics known once, not per epoch (e.g. the trial's `cost_*`), at `step`."""
        stamp = int(time.time() * 1000)
        self._rows += [(key, float(value), stamp, step) for key, value in metrics.items()]
        self._send_metrics()

    def _send_metrics(self) -> None:
        if self._rows:
            self._submit(trial_tasks.log_metrics, self._rows)
            self._rows = []
        self._sent_at = time.monotonic()

    def log_completed(self, *, model: Any, splits: Splits, test_eval: Evaluation,
                      fit: FitResult, log_model: bool) -> None:
        """Queue the completed trial's report: tables, figures, final metrics and maybe
        the model. `log_model` is the caller's verdict "this trial is the best so far"
        (see `StudyTracker.wants_model`); the `log_models` policy has the last word."""
        from .trial_artifacts import CompletedTrial

        self._send_metrics()
        wanted = self.log_models == "all" or (self.log_models == "best" and log_model)
        done = CompletedTrial.collect(model=model, splits=splits, test_eval=test_eval, fit=fit,
                                      log_model=wanted, hold_model=self.hold_best)
        self._submit(trial_tasks.log_completed, done, experiment_id=self.experiment_id,
                     study_name=self.study_name, trial_number=self.trial_number)

    def end(self, state: str, reason: str = "", *, wait: bool = True) -> None:
        """Tag `optuna.state`/`optuna.reason` and end the run FINISHED/KILLED/FAILED.

        Idempotent: the first call wins. `wait=True` returns once everything of this run
        is written; `wait=False` leaves that to the sidecar, overlapping it with the next
        trial (`finish_study`, `promote`, `compare_trials` and interpreter exit drain it).
        A failure to write is logged, not raised: `end` runs in `finally` blocks and must
        not hide the trial's own exception.
        """
        state = state.upper()
        if state not in T.RUN_STATUS:
            raise ValueError(f"state must be one of {', '.join(T.RUN_STATUS)} but got {state!r}")
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._send_metrics()
        self._submit(trial_tasks.end_run, state, reason)
        self._link(wait=True)
        if wait:
            self._submit(trial_tasks.wait_ended)
            cf.wait([self._last], timeout=CREATE_TIMEOUT_S)
