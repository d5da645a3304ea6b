"""The CLI for scripts and terminals: --version, shell completion, -v/-q, --format
table|json|csv, and the progress bars (on for a terminal or notebook, off in logs)."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import subprocess
import sys
from importlib.metadata import version

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from rich.console import Console
from typer.testing import CliRunner

from tunetrack.search.cli import app
from tunetrack.search.progress import StudyProgress

from .studyfiles import write_study
from .support import orphan_trial

runner = CliRunner(env={"COLUMNS": "200"})
CLI = [sys.executable, "-m", "tunetrack.search.cli"]


@pytest.fixture
def storage(tmp_path, monkeypatch):
    """A SQLite storage with study `made`: three complete trials, one pruned, one failed,
    written through Optuna's API (no training)."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "TUNETRACK_STORAGE", "OPTUNA_STORAGE",
                "TUNETRACK_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    url = f"sqlite:///{tmp_path}/t.db"
    study = optuna.create_study(study_name="made", storage=url, direction="maximize")
    dists = {"train.lr": FloatDistribution(1e-4, 1e-1, log=True),
             "model.depth": IntDistribution(1, 3)}
    for i, value in enumerate([0.91, 0.95, 0.93]):
        study.add_trial(optuna.trial.create_trial(
            params={"train.lr": 0.01 * (i + 1), "model.depth": i + 1}, distributions=dists,
            value=value, user_attrs={"test_accuracy": value - 0.01, "epochs_run": 5 + i}))
    study.add_trial(optuna.trial.create_trial(
        params={"train.lr": 0.05, "model.depth": 1}, distributions=dists,
        state=optuna.trial.TrialState.PRUNED, intermediate_values={0: 0.5},
        user_attrs={"reason": "pruned by MedianPruner at epoch 0", "epochs_run": 1}))
    study.add_trial(optuna.trial.create_trial(
        params={"train.lr": 0.07, "model.depth": 2}, distributions=dists,
        state=optuna.trial.TrialState.FAIL, user_attrs={"reason": "ValueError: boom"}))
    return url


def test_version_names_tunetrack_and_its_libraries():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == (
        f"tunetrack {version('tunetrack')} (optuna {version('optuna')}, "
        f"mlflow {version('mlflow')}, torch {version('torch')})")


def test_shell_completion_completes_commands_and_options():
    # typer detects the calling shell (shellingham): run under bash, whatever shell runs
    # pytest (CI's make uses sh, which typer does not support); a second command keeps bash
    shown = subprocess.run(["bash", "-c", '"$@" --show-completion; exit $?', "bash", *CLI],
                           capture_output=True, text=True, check=False, timeout=60)
    assert shown.returncode == 0 and "_TUNETRACK_COMPLETE" in shown.stdout
    env = {**os.environ, "_TUNETRACK_COMPLETE": "complete_bash", "COMP_WORDS": "tunetrack st",
           "COMP_CWORD": "1"}
    completed = subprocess.run(CLI, env=env, capture_output=True, text=True, check=False,
                               timeout=60)
    assert completed.stdout.split() == ["status", "studies"]
    env.update(COMP_WORDS="tunetrack status x --fo", COMP_CWORD="3")
    completed = subprocess.run(CLI, env=env, capture_output=True, text=True, check=False,
                               timeout=60)
    assert completed.stdout.split() == ["--format"]


def test_json_of_status_best_studies_and_compare_parses(storage):
    status = json.loads(runner.invoke(app, ["status", "made", "--storage", storage,
                                            "--format", "json"]).stdout)
    assert [t["number"] for t in status] == [0, 1, 2, 3, 4]
    assert [t["state"] for t in status] == ["COMPLETE"] * 3 + ["PRUNED", "FAIL"]
    assert status[1]["value"] == 0.95 and status[1]["test_accuracy"] == pytest.approx(0.94)
    assert status[1]["params"] == {"train.lr": 0.02, "model.depth": 2}
    assert status[4]["value"] is None and status[4]["reason"] == "ValueError: boom"
    best = json.loads(runner.invoke(app, ["best", "made", "--storage", storage, "-f",
                                          "json"]).stdout)
    assert best == [{"number": 1, "value": 0.95, "test_accuracy": pytest.approx(0.94),
                     "params": {"train.lr": 0.02, "model.depth": 2}}]
    studies = json.loads(runner.invoke(app, ["studies", "--storage", storage, "-f",
                                             "json"]).stdout)
    assert [(s["name"], s["trials"], s["best_values"], s["directions"]) for s in studies] == [
        ("made", 5, [0.95], ["maximize"])]
    result = runner.invoke(app, ["compare", "made", "--storage", storage, "--top", "2",
                                 "--format", "json", "--tracking-uri", "sqlite:///m.db"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)
    assert [(t["number"], t["value"]) for t in top["trials"]] == [(1, 0.95), (2, 0.93)]
    assert [c["target"] for c in top["cost_to_target"]][:3] == [
        "90% of best", "95% of best", "99% of best"]


def test_csv_has_a_header_and_one_row_per_trial(storage):
    result = runner.invoke(app, ["status", "made", "--storage", storage, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 5
    assert rows[0]["params.train.lr"] == "0.01" and rows[0]["state"] == "COMPLETE"
    assert rows[4]["reason"] == "ValueError: boom" and rows[4]["value"] == ""


def test_table_is_the_default_and_a_bad_format_is_refused(storage):
    table = runner.invoke(app, ["status", "made", "--storage", storage])
    assert "study made" in table.stdout and "ValueError: boom" in table.stdout
    bad = runner.invoke(app, ["status", "made", "--storage", storage, "--format", "xml"])
    assert bad.exit_code == 2 and "'xml' is not one of" in bad.output


def test_verbose_shows_tunetrack_info_and_quiet_hides_it(storage, tmp_path):
    """`worker` on a journal storage logs (at INFO) that killed trials are not retried."""
    file = write_study(tmp_path, "made")
    journal = f"journal:{tmp_path}/made.journal"
    study = optuna.create_study(study_name="made", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(f"{tmp_path}/made.journal")),
        direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    args = ["worker", str(file), "--storage", journal, "--trials-total", "1", "--no-tracking"]
    info = "storage has no heartbeats"
    quiet = runner.invoke(app, args)
    assert quiet.exit_code == 0 and info not in quiet.stderr
    verbose = runner.invoke(app, ["-v", *args])
    assert verbose.exit_code == 0 and info in verbose.stderr
    assert "INFO tunetrack.search.shared_study" in verbose.stderr
    assert info not in runner.invoke(app, ["-q", *args]).stderr


# ---- progress bars -------------------------------------------------------------------------


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, force_jupyter=False, width=150), out


def test_run_study_draws_trial_and_epoch_bars_for_a_terminal(tmp_path, monkeypatch):
    from tunetrack.search import run_study

    monkeypatch.chdir(tmp_path)
    console, out = _console(terminal=True)
    bar = StudyProgress("tiny", 2, console=console)
    assert bar.enabled
    epochs: dict[str, list[int]] = {}  # what each trial's bar was set to, frame rate aside
    update = bar.progress.update

    def record(task, **kwargs):
        name = bar.progress._tasks[task].description.strip()
        if "completed" in kwargs and name.startswith("trial"):
            epochs.setdefault(name, []).append(kwargs["completed"])
        update(task, **kwargs)

    monkeypatch.setattr(bar.progress, "update", record)
    run_study(write_study(tmp_path, n_trials=2, max_epochs=3), progress=bar,
              storage=f"sqlite:///{tmp_path}/s.db")
    assert epochs == {"trial 0": [1, 2, 3], "trial 1": [1, 2, 3]}
    assert not [t for t in bar.progress.tasks if t.description.strip().startswith("trial")]
    text = out.getvalue()
    assert "2/2" in text and "best 0." in text  # the study bar's last frame


def test_bars_are_off_when_nobody_watches(tmp_path, monkeypatch):
    from tunetrack.search import run_study

    monkeypatch.chdir(tmp_path)
    console, out = _console(terminal=False)
    bar = StudyProgress("tiny", 1, console=console)
    assert not bar.enabled
    run_study(write_study(tmp_path, n_trials=1), progress=bar, storage=f"sqlite:///{tmp_path}/s.db")
    assert out.getvalue() == ""


def test_shared_bar_counts_every_workers_trials(storage):
    """`worker` and `run --workers` count the study's finished trials, not their own."""
    console, _ = _console(terminal=True)
    bar = StudyProgress("made", 6, shared=True, console=console)
    study = optuna.load_study(study_name="made", storage=storage)
    bar.poll(lambda: study, every_s=0.0)
    task = bar.progress.tasks[0]
    assert task.completed == 4  # 3 complete + 1 pruned; failed trials do not count
    assert "1 pruned" in task.fields["detail"] and "best 0.9500 (#1)" in task.fields["detail"]

    def not_yet():
        raise KeyError("made")

    bar.poll(not_yet, every_s=0.0)  # a study no worker has created yet: no error


RUN_ID = "0123456789abcdef0123456789abcdef"  # MLflow run ids are 32 hex digits


@pytest.fixture
def wide_study(storage):
    """Study `made` plus a study with many long parameters and run ids, as a real one."""
    study = optuna.create_study(study_name="wide", storage=storage, direction="maximize")
    dists = {f"train.{name}": FloatDistribution(1e-6, 1.0, log=True) for name in (
        "learning_rate", "weight_decay", "momentum", "step_gamma", "l1", "label_smoothing")}
    dists["model.activation"] = optuna.distributions.CategoricalDistribution(
        ["leaky_relu", "relu"])
    for i in range(6):
        params = {k: 1.234567e-4 * (i + 1) for k in dists if k != "model.activation"}
        study.add_trial(optuna.trial.create_trial(
            params={**params, "model.activation": "leaky_relu"}, distributions=dists,
            value=0.9 + i / 100, user_attrs={"test_accuracy": 0.9, "epochs_run": 30,
                                             "mlflow_run_id": RUN_ID[:-1] + str(i),
                                             "cost_device_seconds": 12.5 * i,
                                             "cost_peak_memory_mb": 123.4}))
    return storage


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("command", [["compare", "wide", "--top", "5"], ["status", "wide"],
                                     ["best", "wide"], ["studies"], ["status", "made"]])
def test_tables_fit_the_terminal_and_keep_run_ids_whole(wide_study, command, columns):
    result = CliRunner(env={"COLUMNS": str(columns)}).invoke(
        app, [*command, "--storage", wide_study, "--tracking-uri", "sqlite:///m.db"]
        if command[0] == "compare" else [*command, "--storage", wide_study])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns, result.stdout
    if command[0] == "compare":
        assert all(RUN_ID[:-1] + str(i) in result.stdout for i in range(1, 6))
        assert "cost to target" in result.stdout
        assert "--wide" in result.stdout or columns > 80  # the parameters did not fit
    if command[:2] == ["status", "wide"]:  # one line per trial, not one per parameter
        rows = [line for line in lines if "COMPLETE" in line and line.startswith("│")]
        assert len(rows) == 6 and len(lines) <= 6 + 8  # + borders, notes, the counts
        assert lines[-1] == "6 trials: 6 COMPLETE"


def test_wide_shows_every_column_in_full(wide_study):
    result = CliRunner(env={"COLUMNS": "80"}).invoke(
        app, ["compare", "wide", "--wide", "--storage", wide_study, "--tracking-uri",
              "sqlite:///m.db"])
    assert result.exit_code == 0, result.output
    assert "label_smoothing" in result.stdout and "peak MB" in result.stdout
    status = CliRunner(env={"COLUMNS": "80"}).invoke(
        app, ["status", "wide", "--wide", "--storage", wide_study]).stdout
    assert "activation=leaky_relu" in status and "…" not in status


def test_validate_prints_json_and_csv(tmp_path):
    file = write_study(tmp_path, "made")
    parsed = json.loads(runner.invoke(app, ["validate", str(file), "-f", "json"]).stdout)
    assert parsed["study"][0]["name"] == "made"
    assert {p["parameter"] for p in parsed["parameters"]} >= {"train.lr"}
    rows = list(csv.DictReader(io.StringIO(runner.invoke(
        app, ["validate", str(file), "--format", "csv"]).stdout)))
    assert rows[0]["section"] == "study" and rows[0]["n_trials"].isdigit()
    assert any(r["parameter"] == "train.lr" for r in rows[1:])


def test_optuna_storage_is_read_after_tunetrack_storage(storage, tmp_path):
    env = {"COLUMNS": "200", "OPTUNA_STORAGE": storage}
    assert json.loads(CliRunner(env=env).invoke(app, ["studies", "-f", "json"]).stdout)[0][
        "name"] == "made"
    other = f"sqlite:///{tmp_path}/other.db"
    optuna.create_study(study_name="other", storage=other)
    listed = CliRunner(env={**env, "TUNETRACK_STORAGE": other}).invoke(
        app, ["studies", "-f", "json"]).stdout
    assert [s["name"] for s in json.loads(listed)] == ["other"]


def test_reading_commands_find_the_journal_of_run_workers(tmp_path, monkeypatch):
    """`run --workers N` keeps the study in ./tunetrack.journal; `status NAME` finds it
    there without --storage and says which store it read."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    monkeypatch.chdir(tmp_path)
    for var in ("TUNETRACK_STORAGE", "OPTUNA_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    journal = JournalStorage(JournalFileBackend(str(tmp_path / "tunetrack.journal")))
    optuna.create_study(study_name="par", storage=journal).optimize(lambda t: 1.0, n_trials=2)
    result = runner.invoke(app, ["status", "par"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("COMPLETE") == 2 + 1  # two rows and the counts
    assert "reading journal:tunetrack.journal, the store of run --workers" in result.stderr
    assert not (tmp_path / "tunetrack.db").exists()
    # a study of the same name in the default SQLite file wins, silently
    optuna.create_study(study_name="par", storage="sqlite:///tunetrack.db")
    result = runner.invoke(app, ["status", "par"])
    assert "COMPLETE" not in result.stdout and "reading" not in result.stderr


def test_status_never_writes_and_repair_cleans_up(storage):
    number = orphan_trial(storage)
    before = [(t.state.name, t.datetime_complete) for t in
              optuna.load_study(study_name="made", storage=storage).trials]
    for command in (["status", "made"], ["best", "made"]):
        result = runner.invoke(app, [*command, "--storage", storage])
        assert result.exit_code == 0, result.output
    assert "tunetrack repair made" in runner.invoke(
        app, ["status", "made", "--storage", storage]).stdout
    assert [(t.state.name, t.datetime_complete) for t in
            optuna.load_study(study_name="made", storage=storage).trials] == before
    repaired = runner.invoke(app, ["repair", "made", "--storage", storage, "-f", "json"])
    assert repaired.exit_code == 0, repaired.output
    assert json.loads(repaired.stdout) == {"study": "made", "failed_and_retried": [number]}
    trials = optuna.load_study(study_name="made", storage=storage).trials
    assert trials[number].state.name == "FAIL" and trials[-1].state.name == "WAITING"
    again = runner.invoke(app, ["repair", "made", "--storage", storage])
    assert "nothing to repair" in again.stdout


@pytest.mark.parametrize(("uri", "shown", "absent"), [
    ("http://127.0.0.1:9/", "http://127.0.0.1:9/#/experiments?workflowType=machine_learning",
     "mlflow ui"),
    (None, "mlflow ui --backend-store-uri sqlite:///mlflow.db", "open http"),
    ("sqlite:////data/m.db", "mlflow ui --backend-store-uri sqlite:////data/m.db", "open http"),
    ("postgresql://u:secret@db/mlflow", "--backend-store-uri postgresql://u:***@db/mlflow",
     "secret"),
    ("/data/mlruns", "--backend-store-uri file:///data/mlruns", "open http"),
])
def test_ui_hint_fits_the_tracking_uri_kind(uri, shown, absent, workdir):
    from tunetrack.tracking.store import ui_hint

    hint = ui_hint(uri, "made")
    text = f"{hint.command}\n{hint.url}"
    assert shown in text and absent not in text
    assert (hint.command is None) == (uri is not None and uri.startswith("http"))


def test_compare_out_writes_csv_and_the_old_csv_spelling_says_the_new_one(storage, tmp_path):
    common = ["compare", "made", "--storage", storage, "--tracking-uri", "sqlite:///m.db"]
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "a.csv")])
    assert result.exit_code == 0 and "deprecated" not in result.stderr
    old = runner.invoke(app, [*common, "--csv", str(tmp_path / "b.csv")])
    assert old.exit_code == 0 and "compare --csv is deprecated; use --out" in old.stderr
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert "--csv" not in runner.invoke(app, ["compare", "--help"]).stdout


def test_run_summary_after_a_server_run_names_its_url_not_mlflow_ui(capsys):
    from tunetrack.search.cli import _print_summary
    from tunetrack.search.study_file import parse_study

    from .studyfiles import tiny_study

    spec = parse_study(tiny_study("made", tracking={"enabled": True}))
    study = optuna.create_study(study_name="made")
    now = datetime.datetime.now()
    _print_summary(study, spec, "http://127.0.0.1:9", None, since=now)
    shown = capsys.readouterr().out
    assert "http://127.0.0.1:9/#/experiments" in shown and "mlflow ui" not in shown
    _print_summary(study, spec, None, None, since=now)
    assert "ui --backend-store-uri sqlite:///mlflow.db" in capsys.readouterr().out
