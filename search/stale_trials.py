"""What happens to the trial of a worker that died: retry it, and end its MLflow run.

A worker killed mid-trial (SIGKILL, OOM killer, preempted node) leaves its trial RUNNING
and its MLflow child run RUNNING (optuna#3215, #1641). With heartbeats on the storage,
another worker's `fail_stale_trials` marks the trial FAIL once no heartbeat came for the
grace period, then calls the storage's `heartbeat_stale_trial_callback`: this one.

It queues the retry with Optuna's own `RetryHeartbeatStaleTrialCallback` (same params,
`retry_history` in the system attrs) and then ends the dead trial's MLflow run FAILED with
the reason, found through the trial's user attr `mlflow_run_id`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from tunetrack.models.errors import TunetrackError, first_line

from .experimental import quiet_experimental

_log = logging.getLogger(__name__)

STALE_REASON = "worker died (stale heartbeat)"
RUN_ID_ATTR = "mlflow_run_id"  # = tunetrack.tracking.tags.ATTR_RUN_ID
# the dead attempt's links and verdicts, which the retry must not inherit
_NOT_INHERITED = (RUN_ID_ATTR, "mlflow_parent_run_id", "reason", "epochs_run", "stop_reason")

EndRun = Callable[[str, str, str], None]  # (run_id, optuna state, reason)


@dataclass(frozen=True)
class Heartbeat:
    """Heartbeat settings of an RDB storage, in seconds.

    The grace period must exceed the longest pause between two heartbeats of a live
    worker, or live trials get failed and run twice (optuna#4234). Heartbeats come from a
    thread, so a slow epoch does not delay them; a stalled process or a saturated
    database does. Defaults: a beat every 10 s, dead after 60 s without one.
    """

    interval_s: int = 10
    grace_s: int = 60
    max_retry: int = 2  # attempts after the first; a trial that kills workers is not looped

    def __post_init__(self) -> None:
        if self.interval_s < 1:
            raise TunetrackError(f"heartbeat interval must be >= 1 s but got {self.interval_s}.")
        if self.grace_s <= self.interval_s:
            raise TunetrackError(
                f"grace period ({self.grace_s} s) must be longer than the heartbeat interval "
                f"({self.interval_s} s), or live trials are failed as stale."
            )
        if self.max_retry < 0:
            raise TunetrackError(f"max_retry must be >= 0 but got {self.max_retry}.")


class RetryStaleTrial:
    """`heartbeat_stale_trial_callback`: Optuna's retry, then end the dead MLflow run.

    `end_run` is called only for trials that have a run; any error from it is logged,
    never raised, so a dead tracking server cannot stop the retry or the worker.
    """

    def __init__(self, max_retry: int | None, end_run: EndRun | None = None):
        with quiet_experimental():
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.max_retry = max_retry
        self._end_run = end_run

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        attempts = len(trial.system_attrs.get("retry_history", ())) + 1
        template = copy.deepcopy(trial)  # Optuna's callback appends to retry_history in place
        template.user_attrs = {
            k: v for k, v in trial.user_attrs.items() if k not in _NOT_INHERITED
        }
        with quiet_experimental():
            self._retry(study, template)
        queued = self.max_retry is None or attempts <= self.max_retry
        _log.warning(
            "trial %s failed: %s; %s", trial.number, STALE_REASON,
            "queued again" if queued else f"not retried ({attempts} attempts)",
        )
        if run_id and self._end_run is not None:
            try:
                self._end_run(run_id, "FAIL", STALE_REASON)
            except Exception as exc:  # tracking is best effort here; the retry matters more
                _log.warning(
                    "could not end MLflow run %s of dead trial %s: %s",
                    run_id, trial.number, first_line(exc),
                )

