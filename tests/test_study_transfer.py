"""Transfer learning through the study file: schema, validation, conditions, a real study.

The end-to-end study runs `run_study` on a tiny on-disk ImageFolder with a resnet18
"pretrained" file (seeded random init) and checks what MLflow holds for every trial.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from tunetrack.models import choices
from tunetrack.search import run_study
from tunetrack.search.space import SearchSpace
from tunetrack.search.study_file import StudyFileError, load_study_file, parse_study

from .transfer_support import make_image_folder, save_weights

STUDIES = Path(__file__).parents[1] / "studies"
ARTIFACTS = {"confusion_matrix.png", "confusion_matrix.csv", "classification_report.json",
             "curves.png", "trial.yaml", "history.csv", "per_class_error.csv",
             "per_class_error.png", "lr.png", "first_layer.png", "feature_maps.png"}


def _study(**model) -> dict:
    return {
        "name": "transfer",
        "dataset": {"name": "imagefolder", "path": "${TT_DATA}", "image_size": 32,
                    "val_fraction": 0.25, "test_fraction": 0.25},
        "model": {"family": "torchvision", "backbone": "resnet18", **model},
        "train": {"max_epochs": 2, "batch_size": 8, "optimizer": "adam", "lr": 1e-3},
        "search": {"n_trials": 3, "sampler": "random", "pruner": {"type": "none"}},
        "tracking": {"log_models": "none"},
    }


# ------------------------------------------------------------ schema and validation


def test_transfer_fields_are_study_options():
    spec = parse_study(_study(freeze={"int": [0, 4]}, weights="DEFAULT",
                              backbone_lr_factor={"float": [0.01, 1.0], "log": True},
                              preprocess="imagenet", input_size=64))
    space = SearchSpace(spec)
    assert [d.path for d in space.dimensions] == ["model.freeze", "model.backbone_lr_factor"]
    assert space.fixed["model.weights"] == "DEFAULT"
    assert space.fixed["model.input_size"] == 64


@pytest.mark.parametrize(("model", "needle"), [
    ({"backbone": "resnet19"}, "model.backbone: unknown value 'resnet19'; allowed: "),
    ({"backbone": {"choice": ["resnet18", "vit_b_16"]}},
     "model.backbone.choice: unknown value(s) ['vit_b_16']; allowed: "),
    ({"preprocess": "imagenet1k"}, "model.preprocess: unknown value 'imagenet1k'"),
    ({"freeze": {"float": [0, 2]}}, "model.freeze.float: model.freeze takes integers"),
])
def test_validate_rejects_bad_transfer_options(model, needle):
    with pytest.raises(StudyFileError) as info:
        parse_study(_study(**model))
    msg = str(info.value)
    assert needle in msg
    if "backbone" in needle:
        assert ", ".join(choices.BACKBONES) in msg


def test_transfer_options_are_sampled_only_for_the_torchvision_family():
    raw = _study(freeze={"int": [0, 4]}, backbone={"choice": ["resnet18", "mobilenet_v3_small"]})
    raw["model"]["family"] = {"choice": ["cnn", "torchvision"]}
    space = SearchSpace(parse_study(raw))
    when = {d.path: d.when for d in space.dimensions}
    assert when["model.freeze"] == (("model.family", ("torchvision",)),)
    assert when["model.backbone"] == (("model.family", ("torchvision",)),)
    raw["model"]["family"] = "cnn"  # a fixed other family: the dimensions never apply
    assert [d.path for d in SearchSpace(parse_study(raw)).dimensions] == []


def test_resolve_expands_weights_env_and_takes_the_image_size(monkeypatch, tmp_path):
    monkeypatch.setenv("TT_DATA", "/data")
    monkeypatch.setenv("TT_WEIGHTS", str(tmp_path))
    (tmp_path / "resnet18.pth").touch()  # validation checks that the file exists
    space = SearchSpace(parse_study(_study(weights="${TT_WEIGHTS}/{backbone}.pth")))
    cfg = space.resolve({})
    assert cfg.model.weights == f"{tmp_path}/{{backbone}}.pth"
    assert cfg.model.input_size == 32  # dataset.image_size: no resize inside the model
    raw = _study(input_size=64)
    assert SearchSpace(parse_study(raw)).resolve({}).model.input_size == 64


def test_shipped_transfer_study_validates_and_resolves(monkeypatch):
    monkeypatch.delenv("TUNETRACK_WEIGHTS", raising=False)
    spec = load_study_file(STUDIES / "transfer_imagefolder.yaml")
    space = SearchSpace(spec)
    searched = {d.path for d in space.dimensions}
    assert {"model.backbone", "model.freeze", "model.backbone_lr_factor"} <= searched
    cfg = space.resolve({})
    assert cfg.model.weights == "DEFAULT" and cfg.model.input_size == 224
    monkeypatch.setenv("TUNETRACK_WEIGHTS", "w/{backbone}.pth")
    assert space.resolve({}).model.weights == "w/{backbone}.pth"


# ---------------------------------------------------------------------- a real study


def test_three_trial_transfer_study_tracks_every_trial(tmp_path, uri, monkeypatch):
    folder = make_image_folder(tmp_path / "images")
    weights = save_weights(tmp_path / "weights" / "resnet18.pth", "resnet18")
    monkeypatch.setenv("TT_DATA", str(folder))
    monkeypatch.setenv("TT_WEIGHTS", str(weights.parent))
    spec = parse_study(_study(weights="${TT_WEIGHTS}/{backbone}.pth",
                              freeze={"int": [0, 5]}))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = run_study(spec, storage=storage, tracking_uri=uri, device="cpu")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [
        (t.state, t.user_attrs.get("reason")) for t in trials]
    client = MlflowClient(uri)
    for trial in trials:
        run_id = trial.user_attrs["mlflow_run_id"]
        files = {a.path for a in client.list_artifacts(run_id)}
        assert files >= ARTIFACTS, (trial.number, ARTIFACTS - files)
        report = json.loads(Path(client.download_artifacts(
            run_id, "classification_report.json", str(tmp_path))).read_text())
        assert ("misclassified.png" in files) == (report["accuracy"] < 1.0)
        assert client.get_run(run_id).data.params["model.freeze"] == str(trial.params[
            "model.freeze"])
    resolved = yaml.safe_load(Path(client.download_artifacts(
        trials[0].user_attrs["mlflow_run_id"], "trial.yaml", str(tmp_path))).read_text())
    assert resolved["model"]["weights"] == f"{weights.parent}/{{backbone}}.pth"
    assert resolved["model"]["input_size"] == 32
