"""The MLflow run of one Optuna trial, as the trial's process sees it: a handle that never
raises and never waits on MLflow (`NullRun` when tracking is off or the helper is gone).

It is the trainer's epoch callback: `on_epoch_end` collects the epoch's metrics and hands
them to the helper process at most once a second; it never stops training (pruning is the
objective's business). What the run holds is decided in `run_contents.py`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import tags as T
from .helper_link import HELPER

if TYPE_CHECKING:
    import optuna

    from tunetrack.models import EpochResult, Evaluation, FitResult, Splits

_log = logging.getLogger(__name__)
LINK_WAIT_S = 120.0  # at its end, a trial waits this long at most to learn its run id
METRICS_EVERY_S = 1.0  # epochs faster than this share one log_batch (fewer store commits)
_keys = itertools.count()


class NullRun:
    """A run that records nothing: tracking is off, or its helper is gone."""

    run_id: str | None = None

    def on_epoch_end(self, result: EpochResult) -> bool:
        return False

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Nothing to record."""

    def completed(self, **_: Any) -> None:
        """Nothing to record."""

    def end(self, state: str, reason: str = "") -> None:
        """Nothing to end."""


class TrialRun(NullRun):
    """Handle of one trial's run; the helper creates the run while the trial trains. The
    Optuna trial gets user attr `mlflow_run_id` as soon as the run exists (checked every
    epoch, waited for at `end`, which comes before Optuna records the trial's state)."""

    def __init__(self, trial: optuna.Trial, *, study: str, params: dict[str, str],
                 tags: dict[str, str], trial_yaml: str, log_models: str,
                 system_metrics_s: float | None, data: Any = None):
        self._trial = trial
        self._key = next(_keys)
        self._log_models = log_models
        self._created = HELPER.send(
            "create_run", want_result=True, run=self._key, study=study, number=trial.number,
            params=params, tags=tags, trial_yaml=trial_yaml, system_metrics_s=system_metrics_s,
            data=data)
        self._run_id: str | None = None
        self._resolved = self._linked = False
        self._rows: list[tuple[str, float, int, int]] = []  # epoch metrics not yet sent
        self._sent_at = 0.0
        self._ended = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TrialRun(trial={self._trial.number}, run_id={self._run_id!r})"

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (waits for the helper to create the run; None if it could not)."""
        self._resolve(LINK_WAIT_S)
        return self._run_id

    def _resolve(self, wait: float) -> bool:
        """Learn the run id from the helper (waiting up to `wait`); True once settled."""
        if not self._resolved and (wait or HELPER.ready(self._created)):
            self._resolved = True
            self._run_id = HELPER.result(self._created, timeout=wait)
        return self._resolved

    def _link(self, wait: float) -> None:
        """Write the run id into the Optuna trial once it is known."""
        if not self._linked and self._resolve(wait):
            self._linked = True
            if self._run_id is not None:
                self._trial.set_user_attr(T.ATTR_RUN_ID, self._run_id)

    def _send(self, op: str, **kwargs: Any) -> None:
        HELPER.send(op, run=self._key, **kwargs)

    def _send_metrics(self) -> None:
        if self._rows:
            self._send("metrics", rows=self._rows)
            self._rows = []
        self._sent_at = time.monotonic()

    def on_epoch_end(self, result: EpochResult) -> bool:
        """Queue this epoch's metrics with `step=epoch`; never stops. Epochs quicker than
        METRICS_EVERY_S are sent together (the UI's curves lag by that much at most)."""
        stamp = int(time.time() * 1000)
        self._rows += [(key, float(value), stamp, result.epoch)
                       for key, value in result.metrics().items()]
        if time.monotonic() - self._sent_at >= METRICS_EVERY_S:
            self._send_metrics()
        self._link(0.0)
        return False

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Queue metrics known once, not per epoch (e.g. the trial's `cost_*`), at `step`."""
        stamp = int(time.time() * 1000)
        self._rows += [(key, float(value), stamp, step) for key, value in metrics.items()]
        self._send_metrics()

    def completed(self, *, values: float | list[float], model: Any, splits: Splits,
                  test_eval: Evaluation, fit: FitResult) -> None:
        """Queue the completed trial's record: final metrics, tables, figures and, when
        `run_contents.model_wanted` says so for `values`, the model."""
        from .run_contents import CompletedTrial, model_wanted

        self._send_metrics()
        try:
            wanted = model_wanted(self._log_models, self._trial.study, values)
            record = CompletedTrial.collect(model=model, splits=splits, test_eval=test_eval,
                                            fit=fit, log_model=wanted)
        except Exception:  # a bug in collecting must not cost the trial its result
            _log.warning("MLflow logging failed: trial %s's record", self._trial.number,
                         exc_info=True)
            return
        self._send("completed", record=record)

    def end(self, state: str, reason: str = "") -> None:
        """Tag `optuna.state`/`optuna.reason` and end the run FINISHED/KILLED/FAILED, after
        its data; the first call wins. Returns once the run id is linked to the trial; the
        writing goes on in the helper while the next trial trains."""
        state = state.upper()
        if state not in T.RUN_STATUS:
            raise ValueError(f"state must be one of {', '.join(T.RUN_STATUS)} but got {state!r}")
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._send_metrics()
        self._send("end", state=state, reason=reason)
        self._link(LINK_WAIT_S)
