"""One trial budget shared by every worker of a study: stop starting trials once it is spoken for.

Optuna's `MaxTrialsCallback` stops a worker once `total` trials have *finished*. Alone it
overshoots by up to one trial per other worker: a worker that finishes trial 22 of 24 sees
22 finished and starts another trial although three workers are still busy with trials
23-25. `SharedTrialBudget` runs in the same place (an `optimize` callback) and also counts
the trials in flight, so a worker does not start a trial the running ones already cover.

While the running trials fill the budget the worker waits instead of exiting: one of them
may belong to a worker that was killed. On storages with heartbeats (RDB) the waiting
worker calls Optuna's `fail_stale_trials`, which fails the dead trial and (through the
storage's `RetryHeartbeatStaleTrialCallback`) queues its retry as WAITING; the worker then
returns to `optimize`, which runs the queued retry. Without heartbeats (JournalStorage,
SQLite) only a trial of a dead process on this host can be told from a slow one
(`clean_up`, see `stale_trials.owner_died`): it is failed and retried, and otherwise the
worker stops at once.

The check and the next `ask()` are two storage round trips, not one transaction: two workers
finishing within the same few milliseconds can still both start the last trial, so the
guarantee is "total finished trials <= total + workers - 1, and == total in practice".
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna

from .optuna_internals import study_storage
from .optuna_warnings import quiet_experimental

_STATE = optuna.trial.TrialState
FINISHED = (_STATE.COMPLETE, _STATE.PRUNED)


class SharedTrialBudget:
    """`study.optimize` callback: stop once finished (+ in flight) trials reach `total`.

    `poll_s` is how often a waiting worker looks again (use the heartbeat interval);
    `deadline` (a `time.monotonic()` value) bounds that wait, like `optimize(timeout=)`.
    """

    def __init__(self, total: int, *, poll_s: float = 5.0, deadline: float | None = None,
                 clean_up: Callable[[optuna.Study], list[int]] | None = None):
        if total < 1:
            raise ValueError(f"total must be >= 1 but got {total}.")
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0 but got {poll_s}.")
        self.total = total
        self.poll_s = poll_s
        self.deadline = deadline
        self.clean_up = clean_up  # fails + retries trials of dead processes; their numbers

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        heartbeats = has_heartbeats(study_storage(study))
        while True:
            finished, running, waiting = _counts(study)
            if finished >= self.total:
                study.stop()
                return
            if waiting or finished + running < self.total:
                return  # a queued retry to run, or room for one more trial
            if self.clean_up is not None and self.clean_up(study):
                continue  # a dead process's trial is queued again: count anew
            if not heartbeats:
                study.stop()  # cannot tell a dead worker's trial from a slow one
                return
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return  # optimize() sees its own timeout and stops
            time.sleep(self.poll_s)
            with quiet_experimental():
                optuna.storages.fail_stale_trials(study)


def has_heartbeats(storage: optuna.storages.BaseStorage) -> bool:
    """True for storages that record heartbeats (RDB opened with `heartbeat_interval`)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def finished_count(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials of the whole study: what the budget counts."""
    return _counts(study)[0]


def finished_so_far(storage: optuna.storages.BaseStorage, name: str) -> int:
    """`finished_count` of the study `name` in `storage`; 0 while it does not exist yet."""
    try:
        return finished_count(optuna.load_study(study_name=name, storage=storage))
    except KeyError:
        return 0


def _counts(study: optuna.Study) -> tuple[int, int, int]:
    """(finished, running, waiting) trials of the whole study, all workers together."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in FINISHED for t in trials)
    running = sum(t.state == _STATE.RUNNING for t in trials)
    waiting = sum(t.state == _STATE.WAITING for t in trials)
    return finished, running, waiting
