"""Tracking URI resolution, fast reachability checks and the cost of importing tracking."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunetrack.models import TunetrackError
from tunetrack.tracking import StudyTracker, check_reachable, resolve_tracking_uri

from .support import free_port


def test_default_uri_is_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns" / "1").mkdir(parents=True)  # MLflow itself would fall back to it
    (tmp_path / "mlruns" / "1" / "meta.yaml").write_text("name: x\n")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


def test_explicit_and_env_uri_win_and_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/env.db"
    assert resolve_tracking_uri("sqlite:///sub/x.db?timeout=5") == (
        f"sqlite:///{tmp_path}/sub/x.db?timeout=5")
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_check_reachable_dead_http_server_fails_fast():
    uri = f"http://127.0.0.1:{free_port()}"
    tracker = StudyTracker(study_name="s", tracking_uri=uri)
    start = time.perf_counter()
    with pytest.raises(TunetrackError, match=re.escape(uri)) as info:
        tracker.check_reachable()
    assert time.perf_counter() - start < 10
    assert "\n" not in str(info.value)


def test_check_reachable_http_server_that_is_not_mlflow(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        with pytest.raises(TunetrackError, match="HTTP 404"):
            check_reachable(f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(10)


def test_check_reachable_sqlite(tmp_path):
    check_reachable(f"sqlite:///{tmp_path}/new.db")  # file created later by MLflow
    with pytest.raises(TunetrackError, match="does not exist"):
        check_reachable(f"sqlite:///{tmp_path}/missing/dir/x.db")
    not_db = tmp_path / "notes.db"
    not_db.write_text("hello, not a database")
    with pytest.raises(TunetrackError, match="not an SQLite database"):
        check_reachable(f"sqlite:///{not_db}")
    with pytest.raises(TunetrackError, match="in-memory"):
        check_reachable("sqlite:///:memory:")


def test_tracker_rejects_bad_options():
    with pytest.raises(TunetrackError, match="log_models"):
        StudyTracker(study_name="s", log_models="some")
    with pytest.raises(TunetrackError, match="study_name"):
        StudyTracker(study_name=" ")


def test_import_is_cheap():
    code = ("import sys, tunetrack.tracking as t; "
            "print(sorted(m for m in ('mlflow', 'matplotlib', 'optuna', 'torch', 'plotly') "
            "if m in sys.modules)); print(sorted(t.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent).stdout.splitlines()
    assert out[0] == "[]"
    assert "StudyTracker" in out[1] and "promote" in out[1]


def test_system_metrics_needs_psutil(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "psutil" else real(name, *a))
    with pytest.raises(TunetrackError, match="psutil"):
        StudyTracker(study_name="s", system_metrics=True)
