"""After `tunetrack run` (what `make demo` does), MLflow holds the whole study.

Checked through `MlflowClient` only, the way the UI sees it: one parent run, one child per
trial with per-epoch metrics, artifacts on completed children, and a logged model whose
predictions on the test split reproduce the recorded test accuracy exactly. Then the
registry: promote twice (second refuses), and `predict` against the champion alias.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from tunetrack.models import DataConfig, load_splits
from tunetrack.search.cli import app
from tunetrack.tracking.registry import load_pytorch_model, predict_logits

from .studyfiles import write_study

EPOCH_METRICS = {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds"}
COMPLETED_ARTIFACTS = {
    "confusion_matrix.png",
    "confusion_matrix.csv",
    "classification_report.json",
    "per_class_error.csv",
    "curves.png",
    "misclassified.png",
    "trial.yaml",
}
runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def tracked_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    file = write_study(
        folder,
        "tracked",
        n_trials=5,
        max_epochs=4,
        tracking={"enabled": True, "log_models": "best"},
        registry={"model_name": "tiny-digits", "min_improvement": 0.0},
    )
    uri = f"sqlite:///{folder}/mlflow.db"
    storage = f"sqlite:///{folder}/tunetrack.db"
    result = runner.invoke(
        app, ["run", str(file), "--no-progress", "--storage", storage, "--tracking-uri", uri]
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tracked", storage=storage)
    return folder, uri, storage, study


def test_one_parent_and_one_child_per_trial(tracked_study):
    _, uri, _, study = tracked_study
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == len(study.trials)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    by_number = {int(c.data.tags["optuna.trial_number"]): c for c in children}
    for trial in study.trials:
        run = by_number[trial.number]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id  # linked both ways
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[trial.state.name]
        assert {k for k in run.data.params if k.startswith(("model.", "train."))} == set(
            trial.params
        )
        for metric in EPOCH_METRICS:
            history = client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == list(range(trial.user_attrs["epochs_run"]))
        # what the trial cost, complete and pruned alike (tests/test_cost.py: the meter)
        cost = {k: v for k, v in run.data.metrics.items() if k.startswith("cost_")}
        assert set(cost) == {"cost_wall_seconds", "cost_device_seconds", "cost_cpu_seconds",
                             "cost_peak_memory_mb"}
        assert cost == {k: trial.user_attrs[k] for k in cost}
    parent_files = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert "trials.csv" in parent_files


def test_completed_children_have_artifacts_and_a_faithful_model(tracked_study):
    _, uri, _, study = tracked_study
    client = MlflowClient(uri)
    splits = load_splits(DataConfig(name="digits"))
    models = 0
    for trial in study.trials:
        if trial.state.name != "COMPLETE":
            continue
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert files >= COMPLETED_ARTIFACTS, COMPLETED_ARTIFACTS - files
        assert run.data.metrics["test_accuracy"] == trial.user_attrs["test_accuracy"]
        model_id = run.data.tags.get("tunetrack.model_id")
        if model_id:
            models += 1
            model, _ = load_pytorch_model(f"models:/{model_id}", client)
            logits = predict_logits(model, splits.test.x)
            accuracy = int((logits.argmax(1) == splits.test.y).sum()) / len(splits.test)
            assert accuracy == run.data.metrics["test_accuracy"]
    assert models >= 1  # log_models: best logs at least the first best trial


def test_promote_twice_then_predict(tracked_study):
    folder, uri, storage, _ = tracked_study
    first = runner.invoke(app, ["promote", "tracked", "--storage", storage, "--tracking-uri", uri])
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines()[-1].startswith("promoted trial #")  # after the evidence
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("tiny-digits", "champion").version
    assert str(version) == "1"
    second = runner.invoke(app, ["promote", "tracked", "--storage", storage, "--tracking-uri", uri])
    assert second.exit_code == 0
    assert second.stdout.splitlines()[-1].startswith("not promoted: ")
    assert str(client.get_model_version_by_alias("tiny-digits", "champion").version) == "1"
    assert len(client.search_model_versions("name='tiny-digits'")) == 1
    images = folder / "images"
    images.mkdir()
    digits = load_splits(DataConfig(name="digits")).test
    for i in range(3):
        pixels = (digits.x[i, 0].numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"digit{i}_label{int(digits.y[i])}.png")
    result = runner.invoke(
        app,
        [
            "predict",
            "models:/tiny-digits@champion",
            str(images),
            "--tracking-uri",
            uri,
            "--top",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and all("digit" in line for line in lines)
    mlflow.set_tracking_uri(None)


def test_unknown_study_and_missing_model_name_fail_cleanly(tracked_study):
    _, uri, storage, _ = tracked_study
    result = runner.invoke(app, ["promote", "nope", "--storage", storage, "--tracking-uri", uri])
    assert result.exit_code == 2 and "unknown study 'nope'" in result.stderr
    result = runner.invoke(
        app, ["predict", "models:/no-such-model@champion", ".", "--tracking-uri", uri]
    )
    assert result.exit_code == 2 and result.stderr.startswith("error: ")


def test_predict_json_lists_every_image_with_ranked_probabilities(tracked_study, tmp_path):
    import json

    _, uri, _, study = tracked_study
    client = MlflowClient(uri)
    model_id = next(client.get_run(t.user_attrs["mlflow_run_id"]).data.tags.get(
        "tunetrack.model_id") for t in study.trials if t.state.name == "COMPLETE"
        and client.get_run(t.user_attrs["mlflow_run_id"]).data.tags.get("tunetrack.model_id"))
    digits = load_splits(DataConfig(name="digits")).test
    for i in range(2):
        pixels = (digits.x[i, 0].numpy() * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"d{i}.png")
    result = runner.invoke(app, ["predict", f"models:/{model_id}", str(tmp_path),
                                 "--classes", "3", "--tracking-uri", uri, "--format", "json"])
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    assert [Path(p["image"]).name for p in predictions] == ["d0.png", "d1.png"]
    for p in predictions:
        probabilities = [c["probability"] for c in p["predictions"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
        assert p["label"] == p["predictions"][0]["label"]
    # several paths (files and folders), the old spelling of --classes, a CSV file
    extra = tmp_path / "more"
    extra.mkdir()
    Image.fromarray((digits.x[2, 0].numpy() * 255).astype(np.uint8)).save(extra / "d2.png")
    out = tmp_path / "predictions.csv"
    old = runner.invoke(app, ["predict", f"models:/{model_id}", str(tmp_path / "d1.png"),
                              str(extra), "--top", "2", "--out", str(out),
                              "--tracking-uri", uri])
    assert old.exit_code == 0, old.output
    assert "predict --top is deprecated; use --classes" in old.stderr
    lines = old.stdout.splitlines()
    assert [Path(line.split(":")[0]).name for line in lines] == ["d1.png", "d2.png"]
    assert all(line.count(",") == 1 for line in lines)  # two classes each
    rows = out.read_text().splitlines()
    assert rows[0].startswith("image,label,probability") and len(rows) == 3
    mlflow.set_tracking_uri(None)


def test_a_completed_trial_reproduces_bit_exact(tracked_study):
    """`tunetrack reproduce` rebuilds a trial of a real `tunetrack run` from its MLflow run
    alone (tests/test_reproduce.py: what breaks it)."""
    _, uri, _, study = tracked_study
    trial = next(t for t in study.trials if t.state.name == "COMPLETE")
    result = runner.invoke(app, ["reproduce", trial.user_attrs["mlflow_run_id"],
                                 "--tracking-uri", uri, "--no-log"])
    assert result.exit_code == 0, result.output
    assert "validation history: bit-exact" in result.stdout
    assert result.stdout.rstrip().endswith("reproduced")
    as_json = runner.invoke(app, ["reproduce", trial.user_attrs["mlflow_run_id"],
                                  "--tracking-uri", uri, "--no-log", "-f", "json"])
    verdict = json.loads(as_json.stdout)
    assert as_json.exit_code == 0 and verdict["reproduced"] is True and verdict["exact"] is True
    assert verdict["run_id"] == trial.user_attrs["mlflow_run_id"]
