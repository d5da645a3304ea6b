"""`tunetrack run --workers N` on one host: the default storage switches to a journal file
(SQLite would say "database is locked"), the budget holds, Ctrl-C reaches every worker."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from .scaleout_support import PYTHON, finished, stop, study_file, trial_runs

CLI = [PYTHON, "-m", "tunetrack.search.cli"]


def _run_workers(folder: Path, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "run", *args], cwd=folder, capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _journal_study(folder: Path, name: str) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(folder / "tunetrack.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def test_three_workers_on_the_default_storage_use_a_journal_not_sqlite(tmp_path):
    study = study_file(tmp_path, "local-three", n_trials=6)
    result = _run_workers(tmp_path, str(study), "--workers", "3", "--no-tracking")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "database is locked" not in output
    assert "storage journal:tunetrack.journal" in output
    assert "3 workers in" in output and "(exit: 0, 0, 0)" in output
    assert not (tmp_path / "tunetrack.db").exists()
    # said, not silent, and `status` finds the journal without --storage
    assert "storage journal:tunetrack.journal, not sqlite:///tunetrack.db" in output
    assert "see the trials with: tunetrack status local-three\n" in output
    status = subprocess.run([*CLI, "status",
                             "local-three", "-f", "json"], cwd=tmp_path, capture_output=True,
                            text=True, check=False, timeout=120)
    assert status.returncode == 0 and "reading journal:tunetrack.journal" in status.stderr
    done = finished(_journal_study(tmp_path, "local-three"))
    assert 6 <= len(done) <= 6 + 2  # in practice exactly 6; see trial_budget.py
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == len(params)  # workers are seeded apart


@pytest.mark.slow
def test_three_tracked_workers_share_the_default_mlflow_sqlite_store(tmp_path):
    study = study_file(tmp_path, "local-tracked", n_trials=9)
    result = _run_workers(tmp_path, str(study), "--workers", "3", timeout_s=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "database is locked" not in output
    optuna_study = _journal_study(tmp_path, "local-tracked")
    runs = trial_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "local-tracked")
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in runs)
    assert numbers == sorted(t.number for t in optuna_study.trials)  # one run per trial
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}


@pytest.mark.slow
def test_ctrl_c_reaches_every_worker_and_leaves_no_process_behind(tmp_path):
    study = study_file(tmp_path, "local-sigint", n_trials=40, epochs=30, batch_size=16)
    parent = subprocess.Popen([*CLI, "run", str(study), "--workers", "2", "--no-tracking"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        seen = []
        deadline = time.monotonic() + 240
        while sum("joining study" in line for line in seen) < 2:
            assert time.monotonic() < deadline, "".join(seen)
            seen.append(parent.stdout.readline())
        while len(_running(tmp_path, "local-sigint")) < 2:  # both workers inside a trial
            assert time.monotonic() < deadline, "".join(seen)
            time.sleep(0.5)
        children = _children(parent.pid)
        assert len(children) == 2
        parent.send_signal(signal.SIGINT)  # only the parent: it must forward
        output = "".join(seen) + parent.communicate(timeout=90)[0]
    finally:
        stop(parent, signal.SIGKILL)
    assert parent.returncode == 130, output
    assert "2 workers in" in output
    assert "interrupted" not in output and "Traceback" not in output  # the summary says it
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"worker {pid} left"
    assert not _running(tmp_path, "local-sigint")  # interrupted trials end FAIL, not RUNNING


def _running(folder: Path, name: str) -> list:
    try:
        study = _journal_study(folder, name)
    except KeyError:
        return []
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(p) for p in out.split()]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
