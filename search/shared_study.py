"""One worker of a study shared by many: join it, run trials until its budget is filled.

`tunetrack worker` is this module. Any number of workers, on one host or many, point at the
same storage and study file; Optuna's storage is the only coordination (no scheduler of our
own). Each worker:

- opens the storage with heartbeats (RDB only), so a worker that dies is noticed by the
  others: its trial is failed after the grace period, re-queued with Optuna's
  `RetryHeartbeatStaleTrialCallback`, and its MLflow run is ended FAILED;
- stops when the study as a whole has `total` finished (COMPLETE + PRUNED) trials
  (`MaxTrialsCallback` via `run_study(max_total_trials=)`, plus `SharedTrialBudget`, which
  also counts the trials in flight so workers do not overshoot);
- seeds its sampler differently from the other workers: same-seeded workers that start
  together would draw the same random start-up trials.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
import warnings
from dataclasses import dataclass
from typing import TextIO

import optuna

from .config import StudySpec
from .stale_trials import Heartbeat, RetryStaleTrial
from .storage import open_storage
from .trial_budget import SharedTrialBudget, finished_count, has_heartbeats

_log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "TUNETRACK_WORKER_INDEX"  # set by `tunetrack run --workers N`
SEED_STRIDE = 100_003  # a prime: worker k's seeds never meet worker j's as trials add up


def worker_label() -> str:
    index = os.environ.get(WORKER_INDEX_ENV)
    return f"w{index}" if index is not None else f"pid{os.getpid()}"


def sampler_seed_offset() -> int:
    """Offset added to the study seed for this worker's sampler.

    Workers launched by `tunetrack run --workers N` get `index * SEED_STRIDE`, so a
    re-run of the same command draws the same seeds; workers started by hand (or by
    `docker compose --scale`) have no index and draw a random offset.
    """
    index = os.environ.get(WORKER_INDEX_ENV)
    if index is not None and index.isdigit():
        return int(index) * SEED_STRIDE
    return secrets.randbelow(2**30)


@dataclass
class TrialLine:
    """Optuna callback printing one line per finished trial, prefixed with the worker."""

    label: str
    total: int
    stream: TextIO = sys.stdout

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = "-" if trial.values is None else ", ".join(f"{v:.4f}" for v in trial.values)
        took = f"{trial.duration.total_seconds():.1f}s" if trial.duration else "-"
        print(
            f"[{self.label}] trial {trial.number} {trial.state.name} {value} ({took}); "
            f"study {finished_count(study)}/{self.total} finished",
            file=self.stream,
            flush=True,
        )


def _end_run_for(spec: StudySpec, tracking_uri: str | None):
    """`end_run(run_id, state, reason)` for dead workers' runs; MLflow imported on first use."""

    def end_run(run_id: str, state: str, reason: str) -> None:
        from tunetrack.tracking import StudyTracker

        StudyTracker(
            study_name=spec.name, experiment=spec.tracking.experiment, tracking_uri=tracking_uri
        ).end_trial_run(run_id, state, reason)

    return end_run


def open_shared_storage(
    url: str | None,
    heartbeat: Heartbeat,
    *,
    spec: StudySpec,
    tracking_uri: str | None,
) -> optuna.storages.BaseStorage:
    """The storage with heartbeats and the retry-and-end-run callback (RDB storages)."""
    end_run = _end_run_for(spec, tracking_uri) if spec.tracking.enabled else None
    with warnings.catch_warnings():  # heartbeat_interval is "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return open_storage(
            url,
            heartbeat_interval=heartbeat.interval_s,
            grace_period=heartbeat.grace_s,
            heartbeat_stale_trial_callback=RetryStaleTrial(heartbeat.max_retry, end_run),
        )


def run_worker(
    spec: StudySpec,
    *,
    storage: str | None,
    total: int | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
    timeout: float | None = None,
    heartbeat: Heartbeat | None = None,
    threads: int | None = None,
    stream: TextIO | None = None,
    progress: bool | None = None,
) -> optuna.Study | None:
    """Join (or create) the study and run trials until `total` have finished in it.

    `total` defaults to the file's `search.n_trials`; it counts every worker's COMPLETE and
    PRUNED trials, old and new. Returns the study, or None when it was already done.
    On a terminal (or with `progress=True`) a bar shows the study's finished trials, every
    worker's, and the running trial's epochs; otherwise one line per finished trial.
    """
    from .progress import StudyProgress
    from .runner import run_study

    total = total or spec.search.n_trials
    stream = stream or sys.stdout  # at call time: the caller may have redirected it
    heartbeat = heartbeat or Heartbeat()
    label = worker_label()
    backend = open_shared_storage(storage, heartbeat, spec=spec, tracking_uri=tracking_uri)
    if not has_heartbeats(backend):
        _log.info("%s: storage has no heartbeats; a killed worker's trial stays RUNNING", label)
    done = _finished_so_far(backend, spec.name)
    if done >= total:
        print(f"[{label}] study {spec.name}: {done}/{total} trials finished, nothing to do",
              file=stream, flush=True)
        return None
    timeout = timeout or spec.search.timeout_s
    budget = SharedTrialBudget(
        total,
        poll_s=min(float(heartbeat.interval_s), 5.0),
        deadline=time.monotonic() + timeout if timeout else None,
    )
    print(f"[{label}] joining study {spec.name}: {done}/{total} trials finished",
          file=stream, flush=True)
    bar = StudyProgress(spec.name, total, done=done, shared=True, enabled=progress)
    lines = [] if bar.enabled else [TrialLine(label, total, stream)]
    return run_study(
        spec,
        n_trials=total - done,  # this worker never needs more; the budget stops it sooner
        timeout=timeout,
        storage=backend,  # an open storage passes through open_storage as is
        tracking_uri=tracking_uri,
        device=device,
        callbacks=[*lines, budget],  # the budget may wait: last
        max_total_trials=total,
        seed_offset=sampler_seed_offset(),
        threads=threads,
        progress=bar if bar.enabled else False,
    )


def _finished_so_far(storage: optuna.storages.BaseStorage, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    return finished_count(study)
