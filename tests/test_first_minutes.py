"""The first minutes: `run` ends with next commands that work as printed in a fresh shell,
and its MLflow UI link opens the experiment's runs list in Model training mode (checked
in headless Chromium against a real `mlflow ui`)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunetrack.search.cli import app
from tunetrack.search.next_steps import next_steps, script
from tunetrack.tracking import tags as T
from tunetrack.tracking.store import (
    client_for,
    get_or_create_experiment,
    trials_filter,
    ui_hint,
    ui_url,
)

from .studyfiles import write_study
from .support import free_port
from .test_tracking_report import CHROMIUM_FLAGS, chromium

runner = CliRunner(env={"COLUMNS": "200"})
MODEL_TRAINING = "?workflowType=machine_learning"
TINY_TRIALS = ("&searchFilter=tags.%60tunetrack.study%60%20%3D%20%27tiny%27%20AND%20"
               "tags.%60tunetrack.role%60%20%3D%20%27trial%27"
               "&orderByKey=metrics.%60best_val_accuracy%60&orderByAsc=false")


def test_ui_url_opens_the_runs_list_in_model_training_mode():
    assert ui_url("http://h:5000/", "7") == (
        "http://h:5000/#/experiments/7/runs?workflowType=machine_learning")
    assert ui_url("http://h:5000") == "http://h:5000/#/experiments?workflowType=machine_learning"


def test_a_study_link_lists_its_trial_runs():
    assert trials_filter("tiny") == (
        "tags.`tunetrack.study` = 'tiny' AND tags.`tunetrack.role` = 'trial'")
    assert ui_url("http://h:5000", "7", "tiny") == (
        f"http://h:5000/#/experiments/7/runs{MODEL_TRAINING}{TINY_TRIALS}")


def test_a_server_is_its_own_ui_and_a_database_needs_mlflow_ui(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = free_port()  # nothing listens: the id is unknown, the link still right
    server = ui_hint(f"http://user:secret@127.0.0.1:{port}", "e")
    assert server.command is None
    assert server.url == f"http://user:***@127.0.0.1:{port}/#/experiments{MODEL_TRAINING}"
    local = ui_hint(f"sqlite:///{tmp_path}/mlflow.db", "e", mlflow=".venv/bin/mlflow")
    assert local.command == (".venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db "
                             "--host 127.0.0.1 --port 5000")
    elsewhere = ui_hint("postgresql://u:pw@db/mlflow", "e")
    assert "postgresql://u:***@db/mlflow" in elsewhere.command and "pw" not in elsewhere.command


def test_experiments_are_tagged_as_model_training(uri):
    client = client_for(uri)
    new = get_or_create_experiment(client, "fresh", uri)
    assert client.get_experiment(new).tags[T.EXPERIMENT_KIND] == "custom_model_development"
    old = client.create_experiment("by-hand")  # made without the tag: gets it on first use
    assert get_or_create_experiment(client, "by-hand", uri) == old
    assert client.get_experiment(old).tags[T.EXPERIMENT_KIND] == "custom_model_development"
    assert ui_hint(uri, "by-hand").url.endswith(f"/#/experiments/{old}/runs{MODEL_TRAINING}")


def test_scripts_are_spelled_for_a_shell_without_the_venv(tmp_path, monkeypatch):
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "tunetrack").touch()
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / ".venv"))
    monkeypatch.chdir(tmp_path)
    assert script("tunetrack") == ".venv/bin/tunetrack"
    assert script("mlflow") == "mlflow"  # not in that venv: whatever PATH finds
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert script("tunetrack") == str(bin_dir / "tunetrack")


def test_next_steps_carry_the_stores_a_fresh_shell_would_not_know(workdir):
    lines = next_steps("s", "s", storage="sqlite:///tunetrack.db", tracking_uri=None)
    assert [line.split()[1:3] for line in lines[1:4]] == [["status", "s"], ["report", "s"],
                                                          ["promote", "s"]]
    assert "--storage" not in "".join(lines) and "--tracking-uri" not in "".join(lines)
    lines = next_steps("s", "s", storage="sqlite:///other.db",
                       tracking_uri="http://127.0.0.1:1")
    assert lines[1].split("#")[0].split()[1:] == ["status", "s", "--storage",
                                                 "sqlite:///other.db"]  # reads Optuna only
    assert all("--storage sqlite:///other.db --tracking-uri http://127.0.0.1:1" in line
               for line in lines[2:4])
    assert lines[-1] == f"  http://127.0.0.1:1/#/experiments{MODEL_TRAINING}"
    assert not any("mlflow ui" in line for line in lines)  # a server is its own UI
    untracked = next_steps("s", None, storage=None, tracking_uri=None)
    assert len(untracked) == 2 and "status s" in untracked[1]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, template_db):
    """A tiny tracked study run by the CLI in its own folder with the default stores."""
    folder = tmp_path_factory.mktemp("first-minutes")
    shutil.copy(template_db, folder / "mlflow.db")
    file = write_study(folder, "tiny", n_trials=3, max_epochs=1,
                       tracking={"enabled": True, "log_models": "none"})
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("TUNETRACK_STORAGE", raising=False)
        result = runner.invoke(app, ["run", file.name, "--no-progress"])
    assert result.exit_code == 0, result.output
    return folder, result.stdout


def test_run_prints_the_next_commands_and_the_ui_link(tracked):
    _, out = tracked
    tail = out[out.index("next:"):].splitlines()
    assert [line.split()[1] for line in tail[1:4]] == ["status", "report", "promote"]
    assert tail[4] == "MLflow UI, in Model training mode on the study's trial runs:"
    assert tail[5].strip().endswith(
        "mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000")
    assert tail[6] == (
        f"  then open http://127.0.0.1:5000/#/experiments/1/runs{MODEL_TRAINING}{TINY_TRIALS}")


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {timeout} s")


@pytest.mark.slow
def test_the_printed_link_opens_the_runs_list_in_chromium(tracked, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (make browser installs it: apt-get, as root)")
    folder, out = tracked
    tail = out[out.index("next:"):].splitlines()
    command = shlex.split(tail[5])
    port = str(free_port())
    command[0] = str(Path(sys.executable).parent / "mlflow")
    command[command.index("--port") + 1] = port
    url = tail[6].split()[-1].replace(":5000/", f":{port}/")
    server = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/health", server)
        dom = subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
             url], capture_output=True, text=True, timeout=120, check=False)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(
        r"<(script|style)\b.*?</\1>", " ", dom.stdout, flags=re.S)))
    # the runs list (not the GenAI traces overview) of experiment "tiny": its three trial
    # runs, each a row of its own, sorted by best validation accuracy
    assert "Run Name" in text and "Sort: best_val_accuracy" in text, text[:2000]
    runs = re.findall(r"Hide run #\w+ (trial-\d+)", text)
    assert sorted(runs) == ["trial-0", "trial-1", "trial-2"], text[:2000]
    assert "Pin run" not in text  # rows of their own, not children folded under a parent


def test_documented_ui_links_open_model_training_mode():
    root = Path(__file__).parents[1]
    links = [link for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]
             for link in re.findall(r"http://[\w.:]+/#/experiments[^\s`)]*",
                                    doc.read_text(encoding="utf-8"))]
    assert len(links) >= 4, links
    assert all(MODEL_TRAINING.lstrip("?") in link.split("?")[1].split("&") for link in links), links
