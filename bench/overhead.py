"""Start and tail of `tunetrack run`: the seconds a user waits outside the trials.

Runs `tunetrack run STUDY --no-progress` (default `studies/digits.yaml`) in a fresh folder
(fresh SQLite stores for Optuna and MLflow, full tracking) `--repeats` times, each timed
from spawn to exit here, and reads the study's own timestamps back from its Optuna store:
start = spawn -> the first trial's `datetime_start`; trials = first trial start -> last
trial's `datetime_complete`; tail = that -> process exit. Also prints the sum of the
trials' own durations (their time in the objective), and first_epoch = spawn -> the
first epoch's end (the earliest per-epoch `val_accuracy` MLflow recorded: tunetrack stamps
each epoch's metrics when the epoch ends): the start target as first worded, "first
epoch within 2.5 s".
Medians over repeats.
Prints one JSON line; targets: start <= 2.5 s, tail <= 1.5 s.
Run: python -m bench.overhead [--repeats 3] [--trials N] [--study studies/digits.yaml]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import tempfile
from pathlib import Path

from bench.wholeprocess import (
    REPO,
    finished_trials,
    median,
    run_process,
    seconds_between,
    stored_study,
    tunetrack_cli,
)

START_TARGET_S, TAIL_TARGET_S = 2.5, 1.5


def first_epoch_end(mlflow_db: Path) -> dt.datetime | None:
    """When the study's first epoch ended: the earliest `val_accuracy` timestamp in MLflow's
    SQLite store (its `metrics` table), None without one (tracking off)."""
    if not mlflow_db.exists():
        return None
    with sqlite3.connect(mlflow_db) as db:
        (ms,) = db.execute("SELECT MIN(timestamp) FROM metrics WHERE key = 'val_accuracy'"
                           ).fetchone()
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000)


def measure(study_file: Path, cwd: Path, trials: int | None) -> dict:
    """One fresh run: start, trials and tail seconds, from spawn/exit and the trial records."""
    extra = ["--trials", str(trials)] if trials else []
    timed = run_process(tunetrack_cli("run", str(study_file), *extra), cwd)
    records = finished_trials(stored_study(f"sqlite:///{cwd}/tunetrack.db"))
    first_start = min(t.start for t in records)
    last_end = max(t.complete for t in records)
    first_epoch = first_epoch_end(cwd / "mlflow.db")
    return {
        "wall_s": timed.seconds,
        "cpu_s": timed.cpu_s,
        "start_s": seconds_between(timed.spawned, first_start),
        "first_epoch_s": first_epoch and seconds_between(timed.spawned, first_epoch),
        "trials_s": seconds_between(first_start, last_end),
        "trial_sum_s": sum(seconds_between(t.start, t.complete) for t in records),
        "tail_s": seconds_between(last_end, timed.exited),
        "n_trials": len(records),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, help="trials per run [default: the file's]")
    parser.add_argument("--study", type=Path, default=REPO / "studies" / "digits.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(args.study.resolve(), Path(tmp) / str(i), args.trials)
                for i in range(args.repeats)]
    out: dict = {"bench": "overhead", "study": args.study.name, "repeats": args.repeats,
                 "trials": runs[0]["n_trials"]}
    for key in ("wall_s", "cpu_s", "trials_s", "trial_sum_s", "start_s", "first_epoch_s", "tail_s"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = median(values) if values else None
    out["runs"] = [{k: v and round(v, 2) for k, v in r.items() if k != "n_trials"}
                   for r in runs]
    out["outside_fraction"] = round((out["start_s"] + out["tail_s"]) / out["wall_s"], 3)
    out["targets_met"] = out["start_s"] <= START_TARGET_S and out["tail_s"] <= TAIL_TARGET_S
    print(json.dumps(out))


if __name__ == "__main__":
    main()
