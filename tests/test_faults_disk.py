"""A disk that fills up under a study (docs/faults.md, "Processes and the database"):
every run ends FAILED or is named in one line, nothing is left RUNNING unnamed, no
traceback. The stores sit on a small tmpfs mounted for the test (skipped where this user
may not mount one)."""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc

from tunetrack.tracking.runs import disk_full_line, full_path

from .studyfiles import write_study

CLI = [sys.executable, "-m", "tunetrack.search.cli"]


def test_a_full_disk_is_told_apart_from_other_failures_in_any_wrapping():
    copy = OSError(errno.ENOSPC, "No space left on device", "/tmp/a.png", None, "/mnt/b.png")
    assert full_path(copy, "/mnt/mlflow.db") == "/mnt/b.png"  # the file that did not fit
    try:  # SQLite's error, wrapped by SQLAlchemy and then by Optuna or MLflow
        try:
            raise sqlalchemy.exc.OperationalError(
                "COMMIT", {}, sqlite3.OperationalError("database or disk is full"))
        except sqlalchemy.exc.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError("invalid data in the commit") from exc
    except optuna.exceptions.StorageInternalError as wrapped:
        assert full_path(wrapped, Path("/mnt/tunetrack.db")) == "/mnt/tunetrack.db"
    assert full_path(OSError(errno.EACCES, "Permission denied"), "/mnt/x.db") is None
    assert full_path(RuntimeError("database is locked"), "/mnt/x.db") is None
    assert re.fullmatch(r"MLflow store full: no space left on device for /tmp/none/x\.db "
                        r"\(\d+ (bytes|KB|MB|GB) left there\)",
                        disk_full_line("MLflow store", "/tmp/none/x.db"))


@pytest.fixture
def small_disk(tmp_path, request) -> Iterator[Path]:
    """A tmpfs of `request.param` (e.g. "3m") at tmp_path/disk, unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={request.param}", "tmpfs",
                              str(folder)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip() or 'no mount'}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "run", "tiny.yaml", "--no-progress", *args], cwd=folder,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MLFLOW_TRACKING_URI": ""})


@pytest.mark.slow
@pytest.mark.parametrize("small_disk", ["3m"], indirect=True)
def test_a_full_mlflow_store_ends_its_runs_failed_or_names_them(small_disk):
    """3 MB: the MLflow store (mlflow.db, mlruns/) fills up while trials log their files.
    Before: exit 0, a warning per failed call, MLflow's tracebacks, runs left RUNNING."""
    write_study(small_disk, n_trials=4, tracking={"enabled": True, "log_models": "all"})
    ran = _run(small_disk)
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr and "warning" not in ran.stderr, ran.stderr
    lines = ran.stderr.splitlines()
    assert lines[0].startswith(f"error: MLflow store full: no space left on device for "
                               f"{small_disk}/"), ran.stderr
    assert lines[0].endswith("its open runs end FAILED and nothing more is logged to it "
                             "(the study goes on: Optuna still records every trial)")
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{small_disk}/tunetrack.db"
                               ).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    named = re.search(r"left RUNNING: (.*) \(a later `tunetrack run`", ran.stderr)
    named = set(named[1].split(", ")) if named else set()
    assert len(lines) == 1 + bool(named), ran.stderr
    with sqlite3.connect(f"file:{small_disk}/mlflow.db?mode=ro", uri=True) as db:
        runs = db.execute("SELECT r.status, t.value FROM runs r LEFT JOIN tags t ON "
                          "t.run_uuid = r.run_uuid AND t.key = 'optuna.trial_number'").fetchall()
    running = {f"trial {number}" if number else "the parent run"
               for status, number in runs if status == "RUNNING"}
    assert running == named, (runs, ran.stderr)  # nothing RUNNING that the line leaves out
    statuses = {status for status, _ in runs}
    assert statuses <= {"FINISHED", "FAILED", "RUNNING"}
    # the store full: its open runs ended FAILED where it still took that write, else named
    assert "FAILED" in statuses or named, (runs, ran.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("small_disk", ["600k"], indirect=True)
def test_a_full_study_storage_stops_the_study_in_one_line(small_disk):
    """600 KB: the Optuna storage (tunetrack.db) fills up mid-study. Before: exit 1 and
    three chained tracebacks (Optuna blaming "invalid data in the commit")."""
    write_study(small_disk, n_trials=200, max_epochs=5)
    ran = _run(small_disk)
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr and "[W " not in ran.stderr, ran.stderr
    (line,) = ran.stderr.splitlines()
    assert line.startswith(f"error: study storage full: no space left on device for "
                           f"{small_disk}/tunetrack.db ("), line
    assert "the study stopped (its finished trials are kept)" in line
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{small_disk}/tunetrack.db")
    states = {t.state.name for t in study.trials}
    assert "COMPLETE" in states
    assert "RUNNING" not in states or "left RUNNING" in line
