"""What happens to the trial of a process that died: fail it, retry it, end its MLflow run.

A process killed mid-trial (SIGKILL, OOM killer, preempted node) leaves its trial RUNNING
and its MLflow child run RUNNING (optuna#3215, #1641). Two ways to notice, and one cure:

- Local stores (SQLite, journal): every trial records who runs it (`OWNER_ATTR`: host,
  boot, pid namespace, pid and the process's start time). Any later tunetrack command
  on the same host (`fail_dead_trials`) finds a RUNNING trial whose process is gone, or
  whose pid now belongs to another process, and fails it. Instant, no grace period.
- RDB storages across hosts: heartbeats. Optuna's `fail_stale_trials` marks the trial FAIL
  once no heartbeat came for the grace period and calls the storage's
  `heartbeat_stale_trial_callback`.

Either way `RetryStaleTrial` queues the retry with Optuna's own
`RetryHeartbeatStaleTrialCallback` (same params, `retry_history` in the system attrs) and
ends the dead trial's MLflow run FAILED with the reason, found through the trial's user attr
`mlflow_run_id`.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tunetrack.models.errors import TunetrackError, first_line

from .optuna_internals import study_storage, trial_id
from .optuna_warnings import quiet_experimental
from .trial_reads import running_trials

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

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                 reason: str = STALE_REASON) -> None:
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
            "trial %s failed: %s; %s", trial.number, reason,
            "queued again" if queued else f"not retried ({attempts} attempts)",
        )
        if run_id and self._end_run is not None:
            try:
                self._end_run(run_id, "FAIL", reason)
            except Exception as exc:  # tracking is best effort here; the retry matters more
                _log.warning(
                    "could not end MLflow run %s of dead trial %s: %s",
                    run_id, trial.number, first_line(exc),
                )


# ---- local stores: is the process that runs a trial still alive? ------------------------

OWNER_ATTR = "tunetrack.owner"  # trial system attr: who runs it (see `this_process`)


def this_process() -> dict[str, Any]:
    """What tells this process apart from any other, now and later on this host."""
    return {"host": socket.gethostname(), "boot": _boot_id(), "pidns": _pid_namespace(),
            "pid": os.getpid(), "start": _start_time(os.getpid())}


def record_owner(trial: optuna.Trial, grace_s: int | None = None) -> None:
    """Note on `trial` that this process runs it (and the heartbeat grace, if any)."""
    owner = this_process() | ({"grace_s": grace_s} if grace_s else {})
    trial.storage.set_trial_system_attr(trial_id(trial), OWNER_ATTR, owner)


def owner_died(owner: dict[str, Any]) -> bool:
    """True when the process in `owner` surely is gone: same host (and pid namespace) as
    ours, and the host rebooted, or the pid is free, a zombie, or another process now.
    A process on another host is never judged here (heartbeats are for that)."""
    me = this_process()
    if owner.get("host") != me["host"] or owner.get("pidns") != me["pidns"]:
        return False
    if owner.get("boot") and me["boot"] and owner["boot"] != me["boot"]:
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid == me["pid"]:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    start = _start_time(pid)
    return start == "zombie" or (None not in (start, owner.get("start"))
                                 and start != owner["start"])


def dead_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The RUNNING trials whose process on this host is gone, found without writing
    anything: `status` shows them, `repair`, `run` and `worker` fail and retry them."""
    return [t for t in running_trials(study) if isinstance(t.system_attrs.get(OWNER_ATTR), dict)
            and owner_died(t.system_attrs[OWNER_ATTR])]


def fail_dead_trials(study: optuna.Study, retry: RetryStaleTrial) -> list[int]:
    """Fail the RUNNING trials whose process died (`owner_died`), retry them and end their
    MLflow runs (through `retry`); returns their numbers. Safe when several processes
    clean up at once: a trial another one already finished is skipped."""
    storage = study_storage(study)
    dead = []
    for trial in dead_trials(study):
        owner = trial.system_attrs[OWNER_ATTR]
        reason = (f"process died (pid {owner.get('pid')} on {owner.get('host')}); "
                  f"found by pid {os.getpid()}")
        try:
            storage.set_trial_user_attr(trial_id(trial), "reason", reason)
            if not storage.set_trial_state_values(trial_id(trial),
                                                  optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first, and retried it
        retry(study, storage.get_trial(trial_id(trial)), reason)
        dead.append(trial.number)
    return dead


@functools.lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time since boot (clock ticks, Linux `/proc`; psutil elsewhere),
    "zombie" for a dead process not yet reaped, None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        stat = ""
    if stat:
        fields = stat.rsplit(")", 1)[1].split()
        return "zombie" if fields[0] in ("Z", "X") else fields[19]
    try:
        import psutil

        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return "zombie"
        return f"{process.create_time():.3f}"
    except Exception:  # no psutil, or no such process
        return None
