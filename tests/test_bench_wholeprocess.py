"""The whole-process benchmark helpers: side order, trial records, time to target."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from bench.wholeprocess import REPO, TrialTimes, alternate, time_to_target

T0 = dt.datetime(2026, 12, 1, 10, 0, 0)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_alternate_swaps_the_order_every_repeat():
    calls = []
    runs = alternate({"a": lambda r: calls.append(("a", r)) or r,
                      "b": lambda r: calls.append(("b", r)) or -r}, repeats=3)
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    assert runs == {"a": [0, 1, 2], "b": [0, -1, -2]}


def test_time_to_target_takes_the_first_completion_not_the_first_start():
    trials = [
        TrialTimes(0, 0.95, at(1), at(3)),
        TrialTimes(1, None, at(3), at(4)),  # pruned
        TrialTimes(2, 0.99, at(4), at(9)),  # started first of the two that reach it ...
        TrialTimes(3, 0.985, at(5), at(7)),  # ... but this one completed first
    ]
    assert time_to_target(trials, T0, 0.98) == (7.0, 3)
    assert time_to_target(trials, at(2), 0.99) == (7.0, 2)
    assert time_to_target(trials, T0, 0.999) == (None, None)


def test_trial_times_survive_json():
    trial = TrialTimes(4, 0.97, at(1.25), at(2.5))
    assert TrialTimes.from_json(json.loads(json.dumps(trial.to_json()))) == trial


def bench_json(name: str, *args: str) -> dict:
    """Run `python -m bench.NAME ARGS` from the repository; its one JSON line."""
    done = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_end_to_end_trial_runs_both_sides():
    out = bench_json("end_to_end_trial", "--epochs", "2", "--repeats", "1")
    assert list(out)[-1] == "ratio" and out["ratio"] > 0
    # both sides trained the 3x512 MLP (chance is 0.1); two epochs are too few for the
    # accuracy band, which the 100-epoch default shows
    assert out["tunetrack"]["best_val_acc"] > 0.8 and out["plain"]["best_val_acc"] > 0.8, out


@pytest.mark.slow
def test_overhead_splits_wall_time_into_start_trials_and_tail():
    out = bench_json("overhead", "--trials", "2", "--repeats", "1")
    assert out["trials"] == 2
    parts = out["start_s"] + out["trials_s"] + out["tail_s"]
    assert out["start_s"] > 0 and out["tail_s"] > 0
    assert out["start_s"] < out["first_epoch_s"] < out["start_s"] + out["trials_s"]
    assert parts == pytest.approx(out["wall_s"], abs=0.1)
