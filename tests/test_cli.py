"""The `tunetrack` CLI: validate, run/resume, status/best/studies, errors and signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from tunetrack.search.cli import app

from .studyfiles import tiny_study, wait_mid_trial, write_study

runner = CliRunner(env={"COLUMNS": "200"})


def trials_in(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials


def test_validate_prints_the_space(workdir):
    result = runner.invoke(app, ["validate", str(write_study(workdir))])
    assert result.exit_code == 0, result.output
    assert "train.lr" in result.stdout and "float [0.001, 0.03] log" in result.stdout
    assert (
        "train.optimizer in ['sgd', 'rmsprop']" in result.stdout
    )  # the implied condition on momentum


def test_validate_lists_every_error_with_its_path(workdir):
    study = tiny_study()
    study["train"]["lr"] = {"float": [0.1, 0.01]}
    study["train"]["batch_size"] = {"choice": []}
    file = workdir / "bad.yaml"
    file.write_text(yaml.safe_dump(study))
    result = runner.invoke(app, ["validate", str(file)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert any("train.lr.float: low must be < high" in line for line in lines)


BAD_STUDIES = {
    "unknown key": {"trian": {}},
    "wrong type": {"train": {"max_epochs": "ten"}},
    "low >= high": {"train": {"lr": {"float": [1, 1]}}},
    "log with low <= 0": {"train": {"lr": {"float": [0, 1], "log": True}}},
    "empty choice": {"train": {"optimizer": {"choice": []}}},
    "when names unknown": {"train": {"momentum": {"float": [0.5, 0.9], "when": {"optim": "sgd"}}}},
    "unknown sampler": {"search": {"sampler": "bayes"}},
    "unknown pruner": {"search": {"pruner": {"type": "sometimes"}}},
}


@pytest.mark.parametrize("case", sorted(BAD_STUDIES))
def test_run_bad_study_exits_2_and_creates_nothing(workdir, case):
    study = tiny_study()
    for key, value in BAD_STUDIES[case].items():
        study[key] = {**study.get(key, {}), **value}
    file = workdir / "bad.yaml"
    file.write_text(yaml.safe_dump(study))
    result = runner.invoke(app, ["run", str(file), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (workdir / "tunetrack.db").exists()
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.yaml"], "does not exist"),
        (["invalid.yaml"], "invalid YAML"),
        (["good.yaml", "--storage", "sqlite:///no/such/folder/x.db"], "does not exist"),
        (["good.yaml", "--storage", "postgresql://postgres@127.0.0.1:1/x"], "cannot open storage"),
        (["good.yaml", "--storage", "not-a-url"], "is not a URL"),
        (["good.yaml", "--device", "cuda:7"], "device"),
    ],
)
def test_run_unusable_input_exits_2(workdir, args, message):
    (workdir / "invalid.yaml").write_text("name: [unclosed\n")
    write_study(workdir, "good")
    start = time.monotonic()
    result = runner.invoke(app, ["run", *args, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert time.monotonic() - start < 10
    assert not (workdir / "tunetrack.db").exists()


def test_run_then_resume_adds_trials_and_reports(workdir):
    file = write_study(workdir, n_trials=3)
    first = runner.invoke(app, ["run", str(file), "--no-progress"])
    assert first.exit_code == 0, first.output
    assert "study tiny: 3 trials" in first.stdout
    db = workdir / "tunetrack.db"
    before = trials_in(db, "tiny")
    assert len(before) == 3
    second = runner.invoke(app, ["run", str(file), "--trials", "2", "--no-progress"])
    assert second.exit_code == 0, second.output
    after = trials_in(db, "tiny")
    assert len(after) == 5
    assert [t.params for t in after[:3]] == [t.params for t in before]  # kept, not restarted
    assert after[3].params != after[0].params  # the resumed sampler explores new points
    status = runner.invoke(app, ["status", "tiny"])
    assert status.exit_code == 0 and "COMPLETE" in status.stdout
    best = runner.invoke(app, ["best", "tiny"])
    assert best.exit_code == 0 and "train.lr" in best.stdout
    listing = runner.invoke(app, ["studies"])
    assert listing.exit_code == 0 and "tiny" in listing.stdout


def test_unknown_study_lists_the_known_ones(workdir):
    runner.invoke(app, ["run", str(write_study(workdir, n_trials=1)), "--no-progress"])
    result = runner.invoke(app, ["status", "nope"])
    assert result.exit_code == 2
    assert "unknown study 'nope'; studies here: tiny" in result.stderr


def test_help_validate_and_status_do_not_import_torch_or_mlflow(workdir):
    file = write_study(workdir, n_trials=1)
    runner.invoke(app, ["run", str(file), "--no-progress"])
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from tunetrack.search.cli import app\n"
        "r = CliRunner()\n"
        f"assert r.invoke(app, ['--help']).exit_code == 0\n"
        f"assert r.invoke(app, ['validate', {str(file)!r}]).exit_code == 0\n"
        "assert r.invoke(app, ['status', 'tiny']).exit_code == 0\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = sorted(top & {'torch', 'mlflow', 'torchvision'})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=workdir)


def _signal_mid_study(
    workdir: Path, sig: int
) -> tuple[Path, list[optuna.trial.FrozenTrial], subprocess.Popen, str]:
    """Start a long study, send `sig` once a trial completed and the next one runs."""
    file = write_study(
        workdir,
        n_trials=50,
        max_epochs=40,
        train={"batch_size": 32, "early_stopping": {"patience": None}},
        search={"pruner": {"type": "none"}},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunetrack.search.cli", "run", str(file), "--no-progress"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    db = workdir / "tunetrack.db"
    wait_mid_trial(f"sqlite:///{db}", "tiny", max_epochs=40, timeout=120)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    return file, trials_in(db, "tiny"), proc, stderr


def _resume_keeps_completed(workdir: Path, file: Path, trials) -> None:
    complete = [t.number for t in trials if t.state.name == "COMPLETE"]
    assert complete
    resumed = runner.invoke(app, ["run", str(file), "--trials", "1", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    again = trials_in(workdir / "tunetrack.db", "tiny")
    assert [t.number for t in again if t.state.name == "COMPLETE"][: len(complete)] == complete
    assert len(again) == len(trials) + 1


def test_sigint_marks_the_running_trial_failed_and_keeps_the_rest(workdir):
    file, trials, proc, stderr = _signal_mid_study(workdir, signal.SIGINT)
    assert (proc.returncode, stderr) == (130, "interrupted\n")  # one line, no traceback
    assert not [t for t in trials if t.state.name == "RUNNING"]
    interrupted = trials[-1]
    assert interrupted.state.name == "FAIL"
    assert interrupted.user_attrs["reason"] == "interrupted (SIGINT)"
    _resume_keeps_completed(workdir, file, trials)


def test_sigkill_loses_only_the_running_trial(workdir):
    """SIGKILL gives no chance to clean up: the running trial stays RUNNING until the next
    command fails and retries it (test_cli_faults); the resume runs that retry first and
    keeps the rest."""
    file, trials, _, _ = _signal_mid_study(workdir, signal.SIGKILL)
    assert [t.state.name for t in trials].count("RUNNING") == 1
    _resume_keeps_completed(workdir, file, trials)
