"""Two `tunetrack run`s of one study at once: each adds its own trials, a fresh SQLite
storage opened by both at the same moment opens for both, and a run that shared its study
says so (docs/faults.md, "Processes and the database")."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import subprocess
import sys

import optuna

from tunetrack.search.concurrent_runs import shared_study_line
from tunetrack.search.stale_trials import OWNER_ATTR, this_process
from tunetrack.search.storage import open_storage

from .studyfiles import write_study

CLI = [sys.executable, "-m", "tunetrack.search.cli"]


def _open_when_released(url: str, barrier) -> str:
    """In a forked process: wait for the others, then open the storage; the error if any."""
    barrier.wait()
    try:
        open_storage(url)
    except Exception as exc:
        return str(exc)
    return "ok"


def test_processes_opening_a_fresh_sqlite_storage_at_once_all_open_it(tmp_path):
    """Four processes create Optuna's tables in one new file at the same moment, in several
    rounds: before, the losers failed with "UNIQUE constraint failed: alembic_version" or
    "table ... already exists" (a second `run` started with the first ended at once)."""
    context = multiprocessing.get_context("fork")
    results = []
    with context.Manager() as manager, context.Pool(4) as pool:
        for round_ in range(5):
            url = f"sqlite:///{tmp_path / f'round{round_}.db'}"
            barrier = manager.Barrier(4)
            results += pool.starmap(_open_when_released, [(url, barrier)] * 4)
    assert results == ["ok"] * 20, results


def _trial(owner: dict, *, start: datetime.datetime,
           end: datetime.datetime | None) -> optuna.trial.FrozenTrial:
    state = optuna.trial.TrialState.COMPLETE if end else optuna.trial.TrialState.RUNNING
    trial = optuna.trial.create_trial(state=state, value=0.5 if end else None,
                                      system_attrs={OWNER_ATTR: owner})
    trial.datetime_start, trial.datetime_complete = start, end
    return trial


def test_the_shared_line_names_what_each_process_ran_while_this_one_ran():
    now = datetime.datetime.now()
    minute = datetime.timedelta(minutes=1)
    me = this_process()
    other = {**me, "pid": me["pid"] + 1, "start": "other"}
    earlier = {**me, "pid": me["pid"] + 2, "start": "earlier"}
    study = optuna.create_study(study_name="s")
    study.add_trial(_trial(earlier, start=now - 3 * minute, end=now - 2 * minute))  # before
    study.add_trial(_trial(me, start=now - minute, end=now))
    study.add_trial(_trial(other, start=now - 2 * minute, end=now))  # began before us
    study.add_trial(_trial(other, start=now, end=None))  # still running
    line = shared_study_line(study, since=now - minute)
    assert line == (f"study s was shared: this run added 1 trial (1) while pid "
                    f"{me['pid'] + 1} ran 2 trials (2, 3); each run adds its own --trials")
    alone = optuna.create_study(study_name="alone")
    alone.add_trial(_trial(earlier, start=now - 3 * minute, end=now - 2 * minute))
    alone.add_trial(_trial(me, start=now - minute, end=now))
    assert shared_study_line(alone, since=now - minute) is None


def test_two_runs_started_together_each_add_their_trials_and_say_so(tmp_path):
    """Two `run --trials 3` in one folder, started together on a fresh default SQLite
    storage (two terminals): 6 trials, both exit 0, each names the other's trials. Three
    trials of ~2 s each, so that the two runs surely overlap (~7 s)."""
    file = write_study(tmp_path, n_trials=10, max_epochs=60,
                       train={"batch_size": 32, "early_stopping": {"patience": None}},
                       search={"pruner": {"type": "none"}})
    procs = [subprocess.Popen([*CLI, "run", str(file), "--trials", "3", "--no-progress"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "COLUMNS": "300"})
             for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/tunetrack.db"
                               ).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    by_pid = {p.pid: sorted(t.number for t in trials
                            if t.system_attrs[OWNER_ATTR]["pid"] == p.pid) for p in procs}
    assert sorted(len(numbers) for numbers in by_pid.values()) == [3, 3]
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        (other,) = set(by_pid) - {proc.pid}
        mine = ", ".join(map(str, by_pid[proc.pid]))
        theirs = ", ".join(map(str, by_pid[other]))
        assert (f"study tiny was shared: this run added 3 trials ({mine}) while pid {other} "
                f"ran 3 trials ({theirs}); each run adds its own --trials") in stdout, stdout
        assert "Traceback" not in stderr, stderr
