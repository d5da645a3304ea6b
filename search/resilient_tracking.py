"""Keep the study going when the MLflow tracking store fails mid-study.

Optuna's storage is the record of a study; MLflow is its report. A tracking server that
goes away after the study started (restarted, network blip, disk full) must not kill
trials that are training fine, so `ResilientTracker` wraps `tunetrack.tracking.StudyTracker`
and turns MLflow failures into warnings: the first failure of each kind prints one line,
the trial that saw it goes on without tracking, and the next trial tries again once a quick
probe finds the store answering. Unreachable at *start* is still an error
(`check_reachable` is not wrapped): that is bad input, and nothing has run yet.

MLflow's REST client retries a dead server with back-off for about four minutes per call;
for an HTTP store the wrapper lowers that (only where the user did not set the variables
themselves) so a dead server costs seconds per trial, not minutes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tunetrack.models.errors import first_line

_log = logging.getLogger(__name__)

# per call: 2 retries with 1 s back-off (~3 s), a 30 s read timeout; MLflow: 7, 2 s, 120 s
FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def tracking_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the tracking store failed", as opposed to a bug in our code."""
    import requests
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [
        MlflowException,
        requests.exceptions.RequestException,
        OSError,  # ConnectionError, TimeoutError (also from the log queue's flush)
    ]
    try:
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.DBAPIError)  # database-backed stores
    except ImportError:
        pass
    return tuple(errors)


_CONNECTION_HINTS = ("Max retries exceeded", "NewConnectionError", "Connection refused",
                     "Failed to establish a new connection")


def _first_line(exc: BaseException) -> str:
    """One short line: MLflow wraps a refused connection in a paragraph of urllib3 text."""
    text = str(getattr(exc, "message", None) or exc).strip()
    if any(hint in text for hint in _CONNECTION_HINTS):
        endpoint = text.split("API request to ", 1)[-1].split(" failed", 1)[0]
        return f"cannot connect ({endpoint})" if endpoint != text else "cannot connect"
    line = first_line(exc)
    return line if len(line) <= 200 else line[:197] + "..."


class ResilientTracker:
    """Proxy of a `StudyTracker` whose MLflow failures after `start_study` are warnings.

    Attributes and methods not listed here (`check_reachable`, `tracking_uri`,
    `wants_model`, ...) pass straight through, so errors before the study starts keep
    their meaning.
    """

    def __init__(self, tracker: Any):
        self._tracker = tracker
        self._errors = tracking_errors()
        self._warned: set[tuple[str, str]] = set()
        self._failing = False  # a call failed; probe the store before the next trial
        self._study: Any = None
        uri = str(getattr(tracker, "tracking_uri", ""))
        if uri.startswith(("http://", "https://")):
            for key, value in FAST_FAIL_ENV.items():
                os.environ.setdefault(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracker, name)

    def __repr__(self) -> str:
        return f"ResilientTracker({self._tracker!r})"

    # ---- failure bookkeeping --------------------------------------------------------------

    def failed(self, where: str, exc: BaseException, trial_number: int | None = None) -> None:
        """Record one failure; the first of each (call, exception type) prints a warning."""
        self._failing = True
        kind = (where, type(exc).__name__)
        trial = f" (trial {trial_number})" if trial_number is not None else ""
        if kind in self._warned:
            _log.debug("MLflow %s failed again%s: %s", where, trial, _first_line(exc))
            return
        self._warned.add(kind)
        consequence = (
            "this trial goes on without tracking" if trial_number is not None
            else "the study goes on"
        )
        _log.warning(
            "warning: MLflow tracking failed in %s%s: %s: %s; %s (Optuna still records "
            "every trial)", where, trial, type(exc).__name__, _first_line(exc), consequence,
        )

    def answering(self) -> bool:
        """After a failure: does the store answer a quick probe again? (No MLflow retries.)"""
        if not self._failing:
            return True
        from tunetrack.models.errors import TunetrackError

        try:
            self._tracker.check_reachable()
        except TunetrackError:
            return False
        self._failing = False
        return True

    def _guard(self, where: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except self._errors as exc:
            self.failed(where, exc)
            return None

    # ---- wrapped calls ----------------------------------------------------------------------

    def start_study(self, study: Any) -> str | None:
        self._study = study
        return self._guard("start_study", self._tracker.start_study, study)

    def finish_study(self, study: Any) -> None:
        if self.answering():
            self._guard("finish_study", self._tracker.finish_study, study)
        else:
            _log.warning("warning: MLflow tracking store still unreachable at the end; the "
                         "study's summary (plots, trials.csv) was not logged (Optuna has "
                         "every trial)")

    def end_trial_run(self, run_id: str, state: str, reason: str) -> None:
        self._guard("end_trial_run", self._tracker.end_trial_run, run_id, state, reason)

    def start_trial(self, trial_number: int, *args: Any, **kwargs: Any) -> Any:
        """The trial's run handle, or None (the objective then trains untracked)."""
        if not self.answering():
            _log.debug("tracking store still down; trial %s runs untracked", trial_number)
            return None
        try:
            if getattr(self._tracker, "parent_run_id", "") is None and self._study is not None:
                self._tracker.start_study(self._study)  # start_study itself had failed
            run = self._tracker.start_trial(trial_number, *args, **kwargs)
        except self._errors as exc:
            self.failed("start_trial", exc, trial_number)
            return None
        return ResilientTrialRun(run, self, trial_number)


class ResilientTrialRun:
    """Proxy of a `TrialRun`: after one failure the rest of the trial is not tracked,
    except that `end` is still tried when the store answers, so no run is left RUNNING
    for a blip that has passed."""

    def __init__(self, run: Any, tracker: ResilientTracker, trial_number: int):
        self._run = run
        self._tracker = tracker
        self._number = trial_number
        self._disabled = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)

    def __repr__(self) -> str:
        return f"ResilientTrialRun({self._run!r})"

    def _guard(self, where: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except self._tracker._errors as exc:
            self._disabled = True
            self._tracker.failed(where, exc, self._number)
            return None

    def on_epoch_end(self, result: Any) -> bool:
        """Never stops training, whatever happened to tracking."""
        if not self._disabled:
            self._guard("on_epoch_end", self._run.on_epoch_end, result)
        return False

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        if not self._disabled:
            self._guard("log_metrics", self._run.log_metrics, metrics, step)

    def log_completed(self, **kwargs: Any) -> None:
        if not self._disabled:
            self._guard("log_completed", self._run.log_completed, **kwargs)

    def end(self, state: str, reason: str = "", *, wait: bool = True) -> None:
        if self._disabled and not self._tracker.answering():
            return
        self._guard("end", self._run.end, state, reason, wait=wait)
        # the run is created in the background (tracking/sidecar.py): a failure there
        # counts like a failing start_trial, so the next trial probes the store first
        error = getattr(self._run, "create_error", None)
        if isinstance(error, self._tracker._errors):
            self._tracker.failed("start_trial", error, self._number)
