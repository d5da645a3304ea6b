"""`tunetrack run FILE --workers N`: N local `tunetrack worker` processes on one study.

Processes, not threads: a trial is CPU- or GPU-bound Python, and a separate process per
worker is also what runs on other hosts, so one code path is tested. The parent:

- picks a storage every worker can write at once (see `parallel_storage`);
- checks the study file, the storage and the tracking store once, so bad input is one
  error line, not N;
- gives each worker one GPU (`CUDA_VISIBLE_DEVICES`) when GPUs are given or found, and
  `cores // N` torch threads (`OMP_NUM_THREADS`, `--threads`) so N workers on N cores do
  not each start N threads and thrash;
- waits, forwards Ctrl-C (SIGINT) and SIGTERM to the workers, and prints a summary.

Workers run in their own sessions so that a terminal's Ctrl-C reaches them once, through
the parent, instead of twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tunetrack.models.errors import TunetrackError

from .config import StudySpec
from .shared_study import WORKER_INDEX_ENV
from .stale_trials import Heartbeat
from .storage import DEFAULT_STORAGE, PARALLEL_DEFAULT_STORAGE

STORAGE_ENV = "TUNETRACK_STORAGE"  # what `tunetrack worker --storage` reads when not given
INTERRUPT_GRACE_S = 30.0  # after Ctrl-C: time for workers to end their runs before SIGKILL


def parallel_storage(storage: str | None, workers: int) -> str | None:
    """The storage URL for `workers` processes writing one study at once.

    SQLite serialises writers with a file lock and raises "database is locked" under
    parallel workers (optuna#820, #4994). So, with more than one worker:
    - no `--storage` (the SQLite default): Optuna's JournalStorage in
      `tunetrack.journal`, a file that several local processes append to safely;
    - an explicit `sqlite://` URL: an error that names the two alternatives, rather than
      moving the study somewhere the user did not ask for;
    - journal and server databases (PostgreSQL, MySQL): as given.
    """
    if workers <= 1:
        return storage
    if storage is None or storage == DEFAULT_STORAGE:
        return PARALLEL_DEFAULT_STORAGE
    if storage.startswith("sqlite:"):
        raise TunetrackError(
            f"storage {storage} cannot be shared by {workers} worker processes (SQLite: "
            f"'database is locked'); use --storage journal:FILE on one host or "
            f"postgresql://USER@HOST/DB across hosts, the password in PGPASSWORD"
        )
    return storage


def available_cores() -> int:
    """CPU cores this process may use (affinity / cgroup cpusets), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_gpus(text: str | None) -> list[str] | None:
    """`--gpus 0,1` -> ["0", "1"]; None when not given. Ids or UUIDs, as CUDA takes them."""
    if text is None:
        return None
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise TunetrackError(f"--gpus {text!r}: give GPU ids separated by commas, e.g. 0,1")
    if len(set(ids)) != len(ids):
        raise TunetrackError(f"--gpus {text!r} lists a GPU twice")
    return ids


def detect_gpus() -> list[str]:
    """CUDA devices this process can see, as the ids to put in CUDA_VISIBLE_DEVICES.

    Without an NVIDIA driver on the host, answers at once instead of importing torch.
    """
    import shutil

    if not Path("/dev/nvidiactl").exists() and shutil.which("nvidia-smi") is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class WorkerPlan:
    """How to start one worker: its command line and the environment it gets."""

    index: int
    argv: list[str]
    env: dict[str, str]
    gpu: str | None
    threads: int


def plan_workers(
    file: Path,
    *,
    workers: int,
    storage: str | None,
    gpus: list[str],
    device: str | None,
    worker_args: list[str],
    cores: int | None = None,
) -> list[WorkerPlan]:
    """One `python -m tunetrack.search.cli worker ...` per worker (GPU i mod len(gpus))."""
    if workers < 1:
        raise TunetrackError(f"--workers must be >= 1, got {workers}")
    threads = max(1, (cores or available_cores()) // workers)
    plans = []
    for index in range(workers):
        gpu = gpus[index % len(gpus)] if gpus else None
        argv = [sys.executable, "-m", "tunetrack.search.cli", "worker", str(file),
                "--threads", str(threads)]
        if gpu is not None:
            argv += ["--device", "cuda"]  # the one device CUDA_VISIBLE_DEVICES leaves visible
        elif device is not None:
            argv += ["--device", device]
        argv += worker_args
        env = {
            **os.environ,
            WORKER_INDEX_ENV: str(index),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
        }
        if storage is not None:  # not in argv: `ps` shows argv to every user, not env
            env[STORAGE_ENV] = storage
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        plans.append(WorkerPlan(index, argv, env, gpu, threads))
    return plans


@dataclass
class WorkersResult:
    """Exit codes of the workers (negative: killed by that signal) and the signal (SIGINT,
    SIGTERM) we stopped them with, if any."""

    returncodes: list[int] = field(default_factory=list)
    stopped_by: int | None = None
    seconds: float = 0.0

    @property
    def interrupted(self) -> bool:
        return self.stopped_by is not None

    @property
    def exit_code(self) -> int:
        """0 all fine; 130 / 143 stopped by Ctrl-C / SIGTERM; 2 when every worker reported a
        user error; else 1."""
        if self.stopped_by is not None:
            return 128 + self.stopped_by
        if all(rc == 0 for rc in self.returncodes):
            return 0
        if all(rc == 2 for rc in self.returncodes):
            return 2
        return 1


def launch(
    plans: list[WorkerPlan], *, cwd: Path | None = None, stdout: int | IO | None = None,
    on_tick: Callable[[], None] | None = None,
) -> WorkersResult:
    """Start every worker, wait for all, forward SIGINT/SIGTERM; never leaves orphans.

    Workers write to our stdout/stderr unless `stdout` says otherwise (e.g. DEVNULL).
    `on_tick` runs every 0.2 s while they work (a progress bar polling the study)."""
    started = time.monotonic()
    procs: list[subprocess.Popen] = []
    result = WorkersResult()
    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        if result.stopped_by is None:
            result.stopped_by = signum
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum if len(forwarded) == 1 else signal.SIGKILL)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for plan in plans:
            procs.append(
                subprocess.Popen(plan.argv, env=plan.env, cwd=cwd, stdout=stdout,
                                 start_new_session=True)
            )
        deadline: float | None = None
        while any(p.poll() is None for p in procs):
            if forwarded and deadline is None:
                deadline = time.monotonic() + INTERRUPT_GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
            if on_tick is not None:
                on_tick()
            time.sleep(0.2)
    finally:
        for proc in procs:  # an exception here (or in Popen) must not leave workers behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    result.returncodes = [p.returncode for p in procs]
    result.seconds = time.monotonic() - started
    return result


def check_before_launch(
    spec: StudySpec, storage: str | None, tracking_uri: str | None
) -> int:
    """Open the storage and the tracking store once, in the parent; finished trials so far.

    Opening also creates Optuna's tables (and MLflow's schema and experiment), so N workers
    on a fresh database do not race to create the same schema. A study file that no longer
    describes the existing study is one error here, not one per worker.
    """
    from .resume import check_resume
    from .space import SearchSpace
    from .storage import open_storage
    from .trial_budget import finished_so_far

    backend = open_storage(storage)
    check_resume(spec, SearchSpace(spec), backend)
    if spec.tracking.enabled:
        from tunetrack.tracking import StudyTracker
        from tunetrack.tracking.store import get_or_create_experiment

        tracker = StudyTracker(
            study_name=spec.name, experiment=spec.tracking.experiment, tracking_uri=tracking_uri
        )
        tracker.check_reachable()
        from tunetrack.tracking.store import ensure_local_store

        ensure_local_store(tracker.tracking_uri)  # two launches at once: created once
        if not tracker.tracking_uri.startswith(("http://", "https://")):  # a server migrates
            get_or_create_experiment(tracker.client, tracker.experiment_name,
                                     tracker.tracking_uri)
    return finished_so_far(backend, spec.name)


def summary_line(spec: StudySpec, storage: str | None, result: WorkersResult) -> str:
    """`N workers: exit codes ...; <study summary>` from what the storage holds now."""
    import optuna

    from .command_output import study_summary
    from .storage import open_storage

    codes = ", ".join(_describe(rc) for rc in result.returncodes)
    head = f"{len(result.returncodes)} workers in {result.seconds:.0f}s (exit: {codes})"
    try:
        study = optuna.load_study(study_name=spec.name, storage=open_storage(storage))
    except KeyError:
        return f"{head}; study {spec.name} was not created"
    return f"{head}; {study_summary(study)}"


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return signal.Signals(-rc).name
        except ValueError:
            return f"signal {-rc}"
    return str(rc)


def run_workers(
    file: Path,
    spec: StudySpec,
    *,
    workers: int,
    gpus: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    data: str | None = None,
    heartbeat: Heartbeat | None = None,
    progress: bool | None = None,
) -> int:
    """Add `trials` (default: the file's n_trials) finished trials to the study in FILE
    with `workers` local processes, like `tunetrack run` does with one; print a summary;
    return the exit code. On a terminal (or `progress=True`) one bar follows the study's
    finished trials instead of the workers' line per trial."""
    switched = parallel_storage(storage, workers)
    if switched != storage:  # never silently: the study is somewhere else than `run`'s
        print(f"storage {switched}, not {DEFAULT_STORAGE}: SQLite locks under {workers} "
              f"parallel writers; status, best and compare read it from there", flush=True)
    storage = switched
    gpu_ids = parse_gpus(gpus)
    if gpu_ids is not None and not detect_gpus():
        raise TunetrackError(f"--gpus {gpus} given, but no CUDA device is visible here")
    if gpu_ids is None and device in (None, "auto", "cuda"):
        gpu_ids = detect_gpus()
    done = check_before_launch(spec, storage, tracking_uri)
    wanted = trials or spec.search.n_trials
    total = done + wanted
    if workers > wanted:
        print(f"{workers} workers for {wanted} trials: starting {wanted}", flush=True)
        workers = wanted
    worker_args = ["--trials-total", str(total)]
    for flag, value in (("--tracking-uri", tracking_uri), ("--timeout", timeout), ("--data", data)):
        if value is not None:
            worker_args += [flag, str(value)]
    if not spec.tracking.enabled:
        worker_args.append("--no-tracking")
    if spec.search.fuse != 1:  # `run --fuse K` reaches every worker
        worker_args += ["--fuse", str(spec.search.fuse)]
    if heartbeat is not None:
        worker_args += [
            "--heartbeat-interval", str(heartbeat.interval_s),
            "--grace-period", str(heartbeat.grace_s),
            "--max-retry", str(heartbeat.max_retry),
        ]
    plans = plan_workers(
        file, workers=workers, storage=storage, gpus=gpu_ids or [], device=device,
        worker_args=worker_args,
    )
    where = ", ".join(f"w{p.index}: GPU {p.gpu}" for p in plans) if gpu_ids else "CPU"
    print(
        f"{workers} workers on study {spec.name} ({done} finished, {wanted} to add) with "
        f"storage {_shown(storage)}; {where}; {plans[0].threads} torch thread(s) each",
        flush=True,
    )
    import optuna

    from .progress import StudyProgress
    from .storage import open_storage

    bar = StudyProgress(spec.name, total, done=done, shared=True, enabled=progress)
    if bar.enabled:  # one bar here; the workers' own bars or lines would garble it
        for plan in plans:
            plan.argv.append("--no-progress")
    backend = open_storage(storage) if bar.enabled else None

    def load() -> optuna.Study:
        return optuna.load_study(study_name=spec.name, storage=backend)

    with bar:
        result = launch(plans, stdout=subprocess.DEVNULL if bar.enabled else None,
                        on_tick=lambda: bar.poll(load))
        bar.poll(load, every_s=0.0)
    print(summary_line(spec, storage, result), flush=True)
    if storage == PARALLEL_DEFAULT_STORAGE:
        from .storage import read_storage

        found = read_storage(spec.name)[0] == storage  # or the SQLite file has one too
        print(f"see the trials with: tunetrack status {spec.name}"
              + ("" if found else f" --storage {storage}"), flush=True)
    return result.exit_code


def _shown(storage: str | None) -> str:
    from tunetrack.tracking.store import redact

    return redact(storage) if storage else DEFAULT_STORAGE
