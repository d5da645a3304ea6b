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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import optuna

from tunetrack.models.errors import TunetrackError, first_line
from tunetrack.tracking.store import redact

from .config import StudySpec
from .optuna_internals import study_storage, uncached_storage
from .optuna_warnings import quiet_experimental
from .stale_trials import OWNER_ATTR, EndRun, Heartbeat, RetryStaleTrial, fail_dead_trials
from .storage import DEFAULT_STORAGE, open_storage
from .trial_budget import SharedTrialBudget, finished_count, finished_so_far, has_heartbeats

_log = logging.getLogger(__name__)

WORKER_INDEX_ENV = "TUNETRACK_WORKER_INDEX"  # set by `tunetrack run --workers N`
SEED_STRIDE = 100_003  # a prime: worker k's seeds never meet worker j's as trials add up
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # = tunetrack.tracking.tags.ATTR_PARENT_RUN_ID
RunStudy = Callable[..., optuna.Study]  # `runner.run_study`


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


def _end_run_for(study_name: str, tracking_uri: str | None) -> EndRun:
    """`end_run(run_id, state, reason)` for dead processes' runs; MLflow imported on first
    use, and only into a store that exists (ending a run never creates a store)."""

    def end_run(run_id: str, state: str, reason: str) -> None:
        tracker = _tracker(study_name, tracking_uri)
        if tracker is not None:
            tracker.end_trial_run(run_id, state, reason)

    return end_run


def _tracker(study_name: str, tracking_uri: str | None):
    from tunetrack.tracking import StudyTracker
    from tunetrack.tracking.store import check_mlflow_store

    tracker = StudyTracker(study_name=study_name, tracking_uri=tracking_uri)
    try:
        check_mlflow_store(tracker.tracking_uri, must_exist=True)
    except TunetrackError as exc:
        _log.warning("cannot end the MLflow runs of dead trials: %s", exc)
        return None
    return tracker


def open_shared_storage(
    url: str | optuna.storages.BaseStorage | None,
    heartbeat: Heartbeat,
    *,
    study_name: str,
    tracking_uri: str | None,
    track: bool = True,
    create: bool = True,
) -> optuna.storages.BaseStorage:
    """The storage with heartbeats and the retry-and-end-run callback (RDB storages)."""
    end_run = _end_run_for(study_name, tracking_uri) if track else None
    with quiet_experimental():  # heartbeat_interval is "experimental" in Optuna
        return open_storage(
            url,
            heartbeat_interval=heartbeat.interval_s,
            grace_period=heartbeat.grace_s,
            heartbeat_stale_trial_callback=RetryStaleTrial(heartbeat.max_retry, end_run),
            create=create,
        )


def open_study_storage(
    url: str | optuna.storages.BaseStorage | None,
    *,
    study_name: str,
    tracking_uri: str | None,
    track: bool = True,
    create: bool = True,
) -> optuna.storages.BaseStorage:
    """The storage for `run` and the commands that read a study: server databases with
    heartbeats (their trials may run on other hosts), local files without (a process's
    liveness is checked directly, see `stale_trials.owner_died`)."""
    if url is None or isinstance(url, optuna.storages.BaseStorage) or not _server(url):
        return open_storage(url, create=create)
    return open_shared_storage(url, Heartbeat(), study_name=study_name,
                               tracking_uri=tracking_uri, track=track, create=create)


def _server(url: str) -> bool:
    return "://" in url and not url.startswith(("sqlite:", "journal:"))


def load_study(name: str, url: str | None, *, tracking_uri: str | None = None) -> optuna.Study:
    """Open an existing study for a command that reads it: never creating a store, and
    changing nothing in it (a look must not end runs; `repair_study` does that)."""
    storage = open_study_storage(url, study_name=name, tracking_uri=tracking_uri,
                                 create=False)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise TunetrackError(
            f"unknown study {name!r}; studies here: {', '.join(names) or 'none'}"
        ) from None
    return study


def repair_study(name: str, url: str | None, *, tracking_uri: str | None = None) -> list[int]:
    """`tunetrack repair`: fail, retry and end the MLflow runs of the study's trials whose
    process died (what `run` and `worker` do when they start); the trials' numbers. A store
    that refuses writes (a read-only file, folder or database user) is one line: the
    reading commands show such a store as it is, so only the repair needs to write."""
    study = load_study(name, url, tracking_uri=tracking_uri)
    try:
        return clean_up_dead_trials(study, tracking_uri=tracking_uri)
    except Exception as exc:
        why = _write_refused(exc)
        if why is None:
            raise
        raise TunetrackError(
            f"cannot repair study {name}: its store {redact(url or DEFAULT_STORAGE)} refuses "
            f"writes ({why}); run `tunetrack repair {name}` where it is writable (status, "
            f"best and compare read it as it is)") from None


_READ_ONLY_MARKERS = ("readonly database", "read-only", "permission denied")


def _write_refused(exc: BaseException) -> str | None:
    """The first line of the innermost error, in `exc` or what caused it, that says the store
    refused a write (SQLite's "attempt to write a readonly database", PostgreSQL's read-only
    transaction or missing privilege, a journal file not writable); None for anything else."""
    found, seen = None, exc
    while seen is not None:
        if isinstance(seen, PermissionError) or any(
                marker in str(seen).lower() for marker in _READ_ONLY_MARKERS):
            found = first_line(seen)
        seen = seen.__cause__ or seen.__context__
    return found


def clean_up_dead_trials(
    study: optuna.Study,
    *,
    tracking_uri: str | None,
    track: bool = True,
    max_retry: int | None = Heartbeat.max_retry,
) -> list[int]:
    """Fail and retry the trials whose process died (liveness on this host, heartbeats on
    RDB storages), end their MLflow runs FAILED, and the study's parent run KILLED when
    nothing runs any more. Returns the numbers of the trials failed here."""
    end_run = _end_run_for(study.study_name, tracking_uri) if track else None
    dead = fail_dead_trials(study, RetryStaleTrial(max_retry, end_run))
    if has_heartbeats(study_storage(study)):
        dead += _fail_stale(study)
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if dead and track and parent and not running:
        tracker = _tracker(study.study_name, tracking_uri)
        try:
            if tracker is not None and tracker.client.get_run(parent).info.status == "RUNNING":
                tracker.client.set_terminated(parent, "KILLED")
        except Exception as exc:  # tracking is best effort here, as in RetryStaleTrial
            _log.warning("could not end MLflow parent run %s: %s", parent, exc)
    return dead


def rdb_storage(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage under Optuna's per-study cache (a study's storage wraps an RDBStorage)."""
    return uncached_storage(storage)


def _fail_stale(study: optuna.Study) -> list[int]:
    """Optuna's heartbeat check, with the longest grace period the running trials asked for
    (the process running a trial records its own; a reader must not judge a worker by a
    shorter one: optuna#4234). Trials that recorded none get this storage's."""
    storage = rdb_storage(study_storage(study))
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if not running:
        return []
    own = storage.grace_period
    storage.grace_period = max(
        t.system_attrs.get(OWNER_ATTR, {}).get("grace_s") or own or 0 for t in running) or own
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)
    after = {t.number for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    return [t.number for t in running if t.number not in after]


def run_worker(
    spec: StudySpec,
    run_study: RunStudy,
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

    `run_study` is `runner.run_study`, passed in: runner imports this module (storages,
    dead trials), so importing it back would close a circle."""
    from .progress import StudyProgress

    total = total or spec.search.n_trials
    stream = stream or sys.stdout  # at call time: the caller may have redirected it
    heartbeat = heartbeat or Heartbeat()
    label = worker_label()
    backend = open_shared_storage(storage, heartbeat, study_name=spec.name,
                                  tracking_uri=tracking_uri, track=spec.tracking.enabled)
    if not has_heartbeats(backend):
        _log.info("%s: storage has no heartbeats; a killed worker's trial stays RUNNING", label)
    done = finished_so_far(backend, spec.name)
    if done >= total:
        print(f"[{label}] study {spec.name}: {done}/{total} trials finished, nothing to do",
              file=stream, flush=True)
        return None
    timeout = timeout or spec.search.timeout_s
    budget = SharedTrialBudget(
        total,
        poll_s=min(float(heartbeat.interval_s), 5.0),
        deadline=time.monotonic() + timeout if timeout else None,
        clean_up=lambda study: clean_up_dead_trials(
            study, tracking_uri=tracking_uri, track=spec.tracking.enabled,
            max_retry=heartbeat.max_retry),
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
