"""examples/own_model runs as the README shows it: a copy of the folder (a network, a
dataset callable, a metric and a study file), driven through the real `tunetrack` command
from another working directory, so the modules resolve from the study file's folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "own_model"
TUNETRACK = str(Path(sys.executable).parent / "tunetrack")


def tunetrack(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "TUNETRACK_STORAGE", "OPTUNA_STORAGE")}
    return subprocess.run([TUNETRACK, *args], cwd=cwd, env=env | {"COLUMNS": "200"},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def example(tmp_path_factory, template_db) -> tuple[Path, Path]:
    """(the copied example folder, an empty working directory holding the stores)."""
    root = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLE, root / "own_model",
                    ignore=shutil.ignore_patterns("__pycache__"))
    work = root / "work"
    work.mkdir()
    shutil.copy(template_db, work / "mlflow.db")
    return root / "own_model", work


@pytest.fixture(scope="module")
def ran(example) -> subprocess.CompletedProcess:
    folder, work = example
    return tunetrack("run", str(folder / "study.yaml"), "--no-progress", cwd=work)


def test_validate_shows_the_users_arguments_as_searched_parameters(example):
    folder, work = example
    result = tunetrack("validate", str(folder / "study.yaml"), cwd=work)
    assert result.returncode == 0, result.stderr
    for line in ("model.init_args.stages", "model.init_args.channels",
                 "maximize worst_class_recall"):
        assert line in result.stdout


def test_a_wrong_class_path_is_one_line_and_writes_nothing(example, tmp_path):
    folder, _ = example
    bad = folder / "bad.yaml"
    bad.write_text((folder / "study.yaml").read_text().replace(
        "acme.nets.SmallConvNet", "acme.nets.SmallConvNett"))
    line = "model.class_path: acme.nets has no 'SmallConvNett' (from 'acme.nets.SmallConvNett')"
    for command in ("validate", "run"):
        result = tunetrack(command, str(bad), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and line in result.stderr
    assert list(tmp_path.iterdir()) == []  # no tunetrack.db, no mlflow.db


def test_the_study_runs_four_trials_and_promotes_its_best(ran, example):
    work = example[1]
    assert ran.returncode == 0, ran.stderr
    assert "MLflow logging failed" not in ran.stderr  # the helper imports the user's code
    study = optuna.load_study(study_name="own-model", storage=f"sqlite:///{work}/tunetrack.db")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(study.trials) == 4 and complete
    assert study.best_value > 0.3  # the worst class's recall: above zero, it learned each
    assert all("test_worst_class_recall" in t.user_attrs for t in complete)
    promoted = tunetrack("promote", "own-model", cwd=work)
    assert promoted.returncode == 0, promoted.stderr
    assert "champion" in promoted.stdout


def test_the_fused_variant_trains_its_trials_as_one_group(example):
    folder, work = example
    result = tunetrack("run", str(folder / "study_fused.yaml"), "--no-progress", cwd=work)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="own-model-fused",
                              storage=f"sqlite:///{work}/tunetrack.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert {t.user_attrs.get("fused_group") for t in study.trials} == {"g0"}  # one group
    assert study.best_value > 0.3


def test_reproduce_rebuilds_the_best_run_and_refuses_it_once_the_network_changed(ran, example):
    """Exit 0 from the recorded folder; after an edit to the network's file, exit 2 with one
    line naming that file (run after the study, on a copy of the example)."""
    from mlflow import MlflowClient

    from tunetrack.tracking import tags as T

    folder, work = example
    assert ran.returncode == 0, ran.stderr
    study = optuna.load_study(study_name="own-model", storage=f"sqlite:///{work}/tunetrack.db")
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    experiment = client.get_experiment_by_name("own-model").experiment_id
    [best] = [r for r in client.search_runs([experiment])
              if r.data.tags.get(T.OPTUNA_TRIAL) == str(study.best_trial.number)]
    same = tunetrack("reproduce", best.info.run_id, cwd=work)
    assert same.returncode == 0, same.stderr
    nets = folder / "acme" / "nets.py"
    nets.write_text(nets.read_text().replace("padding=1", "padding=1, bias=True"))
    changed = tunetrack("reproduce", best.info.run_id, cwd=work)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert str(nets.resolve()) in changed.stderr
