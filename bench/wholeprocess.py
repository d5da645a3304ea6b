"""Timing whole processes, as a user meets them: from spawn to exit, imports included.

The end-to-end benchmarks (`end_to_end_trial`, `study_vs_script`, `overhead`) run each
side as its own Python process in a fresh folder, so nothing is warm (imports, stores,
caches of a previous side) and every second the user waits is counted. Sides alternate
(A B B A A B ...) so that the drift of a shared machine hits both alike; results are
medians. Trial timestamps come from each study's own Optuna records (`datetime_start`,
`datetime_complete`: local wall-clock `datetime.now()` in the child), so they are set
against the spawn and exit times taken here on the same clock.
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import optuna

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
# settings that would point a child at stores other than its fresh folder's defaults
STORE_SETTINGS = ("MLFLOW_TRACKING_URI", "TUNETRACK_STORAGE", "MLFLOW_REGISTRY_URI")


@dataclass
class Timed:
    """One finished child process: its wall-clock spawn and exit, and what it printed."""

    spawned: dt.datetime
    exited: dt.datetime
    seconds: float  # spawn to exit (monotonic clock)
    cpu_s: float  # user + system CPU of the process and the children it waited for
    stdout: str


def run_process(args: list[str], cwd: Path, threads: int | None = None) -> Timed:
    """Run `python ARGS` in `cwd` and time it from spawn to exit.

    The child sees this repository on PYTHONPATH (so `-m bench.X` works from any folder)
    and none of the store settings, so tunetrack falls back to `./tunetrack.db` and
    `./mlflow.db` in `cwd`: fresh stores, as a new user's first run gets them. `threads`
    sets its OMP_NUM_THREADS (torch's intra-op threads); None leaves the environment's.
    """
    env = {k: v for k, v in os.environ.items() if k not in STORE_SETTINGS}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cwd.mkdir(parents=True, exist_ok=True)
    cpu_before = _children_cpu()
    spawned, start = dt.datetime.now(), time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)
    seconds, exited = time.perf_counter() - start, dt.datetime.now()
    cpu_s = _children_cpu() - cpu_before
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode} in {cwd}:\n"
                           f"{done.stderr[-3000:]}")
    return Timed(spawned, exited, seconds, cpu_s, done.stdout)


def _children_cpu() -> float:
    """CPU seconds of every child process reaped so far (their reaped children included):
    steadier than wall time on a machine other work loads, though a side that runs two
    processes at once (tunetrack's tracking helper) adds both."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tunetrack_cli(*args: str) -> list[str]:
    """Arguments for the `tunetrack` command as a user types it (no progress bar)."""
    return ["-m", "tunetrack.search.cli", *args, "--no-progress"]


def alternate(sides: dict[str, Callable[[int], T]], repeats: int) -> dict[str, list[T]]:
    """Call each side `repeats` times in the order A B, B A, A B, ... (`fn(repeat)`)."""
    names = list(sides)
    out: dict[str, list[T]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            out[name].append(sides[name](repeat))
    return out


@dataclass
class TrialTimes:
    """When one finished trial ran and what it scored, as its study recorded it."""

    number: int
    value: float | None  # None for a pruned trial
    start: dt.datetime
    complete: dt.datetime

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialTimes:
        return cls(trial.number, trial.value, trial.datetime_start, trial.datetime_complete)

    def to_json(self) -> dict:
        return {"number": self.number, "value": self.value,
                "start": self.start.isoformat(), "complete": self.complete.isoformat()}

    @classmethod
    def from_json(cls, raw: dict) -> TrialTimes:
        return cls(raw["number"], raw["value"], dt.datetime.fromisoformat(raw["start"]),
                   dt.datetime.fromisoformat(raw["complete"]))


def finished_trials(study: optuna.Study) -> list[TrialTimes]:
    """The study's COMPLETE and PRUNED trials, by start time."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    trials = study.get_trials(deepcopy=False, states=states)
    return sorted(map(TrialTimes.of, trials), key=lambda t: t.start)


def stored_study(storage_url: str) -> optuna.Study:
    """The only study in `storage_url` (a child's fresh store, read back after it exited)."""
    storage = optuna.storages.get_storage(storage_url)
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def seconds_between(a: dt.datetime, b: dt.datetime) -> float:
    return (b - a).total_seconds()


def time_to_target(trials: list[TrialTimes], since: dt.datetime,
                   target: float) -> tuple[float | None, int | None]:
    """Seconds from `since` until the first trial completed with a value >= `target`, and
    that trial's number (None, None when none did)."""
    reached = [t for t in trials if t.value is not None and t.value >= target]
    if not reached:
        return None, None
    first = min(reached, key=lambda t: t.complete)
    return seconds_between(since, first.complete), first.number


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)
