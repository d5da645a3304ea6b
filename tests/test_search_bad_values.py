"""Every class of bad value in a study file: `validate` exits 2 with one line naming the
field, and `run` exits 2 having written nothing (no store file, no study row, no MLflow
experiment or run). The rules are the config classes' own `problems()`, so these lines are
the ones the trainer would stop on."""

from __future__ import annotations

import math

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from tunetrack.search.cli import app
from tunetrack.search.study_file import parse_study

from .studyfiles import tiny_study

runner = CliRunner(env={"COLUMNS": "200", "TUNETRACK_STORAGE": None, "OPTUNA_STORAGE": None,
                        "MLFLOW_TRACKING_URI": None})

# id -> (study-file overrides, the one line `validate` prints after "FILE: ")
CASES: dict[str, tuple[dict, str]] = {
    "lr 0": ({"train": {"lr": 0.0}}, "train.lr must be > 0 and finite but got 0.0"),
    "lr negative": ({"train": {"lr": -0.1}}, "train.lr must be > 0 and finite but got -0.1"),
    "lr NaN": ({"train": {"lr": math.nan}}, "train.lr must be > 0 and finite but got nan"),
    "dropout 1": ({"model": {"dropout": 1.0}}, "model.dropout must be in [0, 1) but got 1.0"),
    "batch_size 0": ({"train": {"batch_size": 0}}, "train.batch_size must be >= 1 but got 0"),
    "depth 0": ({"model": {"depth": 0}}, "model.depth must be >= 1 but got 0"),
    "width 0": ({"model": {"width": 0}}, "model.width must be >= 1 but got 0"),
    "max_epochs 0": ({"train": {"max_epochs": 0}}, "train.max_epochs must be >= 1 but got 0"),
    "momentum 2": ({"train": {"momentum": 2.0}}, "train.momentum must be in [0, 1) but got 2.0"),
    "patience -1": ({"train": {"early_stopping": {"patience": -1}}},
                    "train.early_stopping.patience must be >= 1 (epochs without improvement) "
                    "or null (never stop early) but got -1"),
    "label_smoothing 2": ({"train": {"label_smoothing": 2.0}},
                          "train.label_smoothing must be in [0, 1) but got 2.0"),
    "weight_decay -1": ({"train": {"weight_decay": -1.0}},
                        "train.weight_decay must be >= 0 and finite but got -1.0"),
    "step_size 0": ({"train": {"step_size": 0}}, "train.step_size must be >= 1 (epochs) but got 0"),
    "plateau_factor 2": ({"train": {"plateau_factor": 2.0}},
                         "train.plateau_factor must be in (0, 1) but got 2.0"),
    "eval_batch_size 0": ({"train": {"eval_batch_size": 0}},
                          "train.eval_batch_size must be >= 1 but got 0"),
    "kernel_size 0": ({"model": {"kernel_size": 0}}, "model.kernel_size must be >= 1 but got 0"),
    "device tpu": ({"train": {"device": "tpu"}},
                   "train.device must be auto, cpu, cuda, cuda:N or mps but got 'tpu'"),
    "val_fraction 1.2": ({"dataset": {"val_fraction": 1.2}},
                         "dataset.val_fraction must be in (0, 1) but got 1.2"),
    "no train split": ({"dataset": {"val_fraction": 0.6, "test_fraction": 0.4}},
                       "dataset.val_fraction + dataset.test_fraction must be < 1 (the rest is "
                       "the training split) but got 0.6 + 0.4"),
    "range low end": ({"train": {"weight_decay": {"float": [-0.1, 0.1]}}},
                      "train.weight_decay.float: train.weight_decay must be >= 0 and finite "
                      "but got -0.1"),
    "range high end": ({"model": {"dropout": {"float": [0.0, 1.0]}}},
                       "model.dropout.float: model.dropout must be in [0, 1) but got 1.0"),
    "int range": ({"model": {"depth": {"int": [0, 3]}}},
                  "model.depth.int: model.depth must be >= 1 but got 0"),
    "stepped range top": ({"model": {"dropout": {"float": [0.0, 1.1], "step": 0.25}}},
                          "model.dropout.float: model.dropout must be in [0, 1) but got 1.0"),
    "choice": ({"train": {"batch_size": {"choice": [32, 0, 64]}}},
               "train.batch_size.choice: train.batch_size must be >= 1 but got 0"),
    "choice of devices": ({"train": {"device": {"choice": ["cpu", "tpu"]}}},
                          "train.device.choice: train.device must be auto, cpu, cuda, cuda:N "
                          "or mps but got 'tpu'"),
    "conditional range": ({"train": {"scheduler": {"choice": ["none", "plateau"]},
                                     "plateau_factor": {"float": [0.5, 1.5]}}},
                          "train.plateau_factor.float: train.plateau_factor must be in (0, 1) "
                          "but got 1.5"),
    "nested choice": ({"train": {"early_stopping": {"patience": {"choice": [3, -1]}}}},
                      "train.early_stopping.patience.choice: train.early_stopping.patience "
                      "must be >= 1"),
    "metric params": ({"search": {"metric": "params"}},
                      "search.metric must be measured every epoch in a single-objective "
                      "study but got 'params'"),
    "metric latency_ms": ({"search": {"metric": "latency_ms"}},
                          "search.metric must be measured every epoch in a single-objective "
                          "study but got 'latency_ms'"),
}
DUPLICATE_KEY = ("name: dup\ntracking: {enabled: true}\ntrain:\n  lr: 0.01\n"
                 "  optimizer: sgd\n  lr: 1.0\n")


def _write(folder, case: str) -> tuple[str, str]:
    """(file, expected line) for `case`; "duplicate key" is raw text, the rest YAML."""
    file = folder / "bad.yaml"
    if case == "duplicate key":
        file.write_text(DUPLICATE_KEY)
        return str(file), (f"study file {file}: invalid YAML at line 6, column 3: duplicate "
                           f"key 'lr' (first at line 4)")
    overrides, line = CASES[case]
    file.write_text(yaml.safe_dump(tiny_study(**overrides, tracking={"enabled": True})))
    return str(file), line


ALL = [*CASES, "duplicate key"]


@pytest.mark.parametrize("case", ALL)
def test_validate_exits_2_with_one_line_naming_the_field(case, tmp_path):
    file, line = _write(tmp_path, case)
    result = runner.invoke(app, ["validate", file])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{file}: {line}") or line in result.stderr, result.stderr


@pytest.mark.parametrize("case", ALL)
def test_run_exits_2_and_creates_no_store(case, tmp_path, monkeypatch):
    """Default stores (./tunetrack.db, ./mlflow.db) are not even created."""
    file, line = _write(tmp_path, case)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", file, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert line in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.parametrize("case", ["lr NaN", "no train split", "range low end", "metric params",
                                  "duplicate key"])
def test_run_adds_nothing_to_existing_stores(case, tmp_path, uri):
    file, line = _write(tmp_path, case)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.storages.RDBStorage(storage)  # an existing, empty storage: a row would show
    result = runner.invoke(app, ["run", file, "--storage", storage, "--tracking-uri", uri,
                                 "--no-progress"])
    assert result.exit_code == 2 and line in result.stderr, result.output
    assert optuna.get_all_study_summaries(storage) == []
    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert client.search_runs(["0"]) == []


def test_good_edges_and_never_active_options_pass():
    parse_study(tiny_study(
        model={"dropout": {"float": [0.0, 0.99]}, "depth": {"int": [1, 3]},
               "width": 8, "activation": "relu"},
        train={"lr": {"float": [1e-6, 10.0], "log": True}, "momentum": {"float": [0.0, 0.99]},
               "label_smoothing": {"choice": [0.0, 0.1]}, "device": {"choice": ["cpu", "auto"]},
               "early_stopping": {"patience": 1, "min_delta": 0.0},
               "step_gamma": {"float": [0.1, 1.0]}, "plateau_factor": {"float": [0.1, 0.9]}},
        dataset={"val_fraction": 0.5, "test_fraction": 0.25},
    ))
    parse_study(tiny_study(model={"dropout": {"float": [0.0, 1.0], "step": 0.3}}))  # top 0.9
    # freeze only applies to the torchvision family; with mlp fixed it is never sampled
    parse_study(tiny_study(model={"family": "mlp", "freeze": {"int": [-1, 2]}}))


def test_metric_params_is_fine_as_one_of_several_objectives():
    spec = parse_study(tiny_study(search={"objectives": [{"metric": "val_accuracy"},
                                                         {"metric": "params"}],
                                          "sampler": "nsga2"}))
    assert [o.resolved_direction for o in spec.search.objective_list] == ["maximize", "minimize"]


def test_merge_keys_may_still_be_overridden(tmp_path):
    file = tmp_path / "merge.yaml"
    file.write_text("name: merge\ntrain:\n  <<: {lr: 0.5, max_epochs: 2}\n  lr: 0.01\n")
    from tunetrack.search.study_file import load_study_file

    assert load_study_file(file).train.lr == 0.01
