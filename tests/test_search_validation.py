"""Values no trial could train with are study-file errors: augmentation bounds, frozen stages
beyond a backbone, missing weights files. They fail `validate` and `run` with one line naming
the field, before a study row or an MLflow run exists, and `validate` stays torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from tunetrack.models import choices
from tunetrack.search.cli import app
from tunetrack.search.study_file import parse_study

from .studyfiles import tiny_study
from .support import errors_of

runner = CliRunner(env={"COLUMNS": "200"})


def _augment(**augment) -> dict:
    return tiny_study(train={"augment": augment})


def _transfer(**model) -> dict:
    return tiny_study(model={"family": "torchvision", "backbone": "resnet18", **model})


# ------------------------------------------------------------------------ augmentation


@pytest.mark.parametrize(("augment", "expected"), [
    ({"crop_scale": 1.5}, "train.augment.crop_scale must be in (0, 1] (1 = off) but got 1.5"),
    ({"crop_ratio": 0.5}, "train.augment.crop_ratio must be >= 1"),
    ({"cutmix_alpha": -1.0}, "train.augment.cutmix_alpha must be >= 0 (0 = off) but got -1.0"),
    ({"mixup_alpha": {"float": [-0.2, 0.4]}},  # the low end
     "train.augment.mixup_alpha.float: train.augment.mixup_alpha must be >= 0 (0 = off) "
     "but got -0.2"),
    ({"crop_scale": {"float": [0.5, 1.5], "step": 0.25}},  # the high end
     "train.augment.crop_scale.float: train.augment.crop_scale must be in (0, 1]"),
    ({"crop_padding": {"int": [-2, 4]}},
     "train.augment.crop_padding.int: train.augment.crop_padding must be >= 0"),
    ({"brightness": {"choice": [0.0, 0.2, 1.5]}},  # every choice, not just the ends
     "train.augment.brightness.choice: train.augment.brightness must be in [0, 1] but got 1.5"),
])
def test_out_of_range_augmentation_names_the_field_and_the_bound(augment, expected):
    assert any(expected in line for line in errors_of(_augment(**augment))), expected


def test_every_bad_augment_value_is_listed_and_good_edges_pass():
    errors = errors_of(_augment(rotation={"choice": [0, 200, 300]}, contrast=-0.1))
    assert len(errors) == 3  # 200, 300 and the fixed contrast, one line each
    assert all("\n" not in e for e in errors)
    edges = {"crop_scale": {"float": [0.1, 1.0]}, "rotation": {"float": [0, 180]},
             "brightness": {"choice": [0.0, 1.0]}, "mixup_alpha": {"float": [0.0, 2.0]}}
    parse_study(_augment(**edges))  # the bounds are inclusive where the trainer's are


def test_wrong_type_choices_are_reported_once_not_crashed_on():
    errors = errors_of(_augment(rotation={"choice": [0, "wide"]}))
    assert errors == ["train.augment.rotation.choice: 'wide' is not a valid float"]


# ---------------------------------------------------------------------- frozen stages


def test_freeze_beyond_the_backbone_names_it_and_the_maximum():
    (line,) = errors_of(_transfer(freeze=6))
    assert line == ("model.freeze 6 is too large for backbone resnet18: it has 5 stages "
                    "(stem, layer1, layer2, layer3, layer4); allowed: 0..5")


def test_searched_freeze_is_checked_at_its_top_for_every_backbone_choice():
    raw = _transfer(freeze={"int": [0, 8]},
                    backbone={"choice": ["resnet18", "efficientnet_b0", "mobilenet_v3_small"]})
    errors = errors_of(raw)
    assert len(errors) == 2  # efficientnet_b0 has 9 stages: 8 fits there
    assert errors[0].startswith("model.freeze.int: model.freeze 8 is too large for backbone "
                                "resnet18") and errors[0].endswith("allowed: 0..5")
    assert "backbone mobilenet_v3_small" in errors[1] and errors[1].endswith("allowed: 0..6")
    assert "allowed: 0..9" in errors_of(_transfer(backbone="efficientnet_b0",
                                                  freeze={"choice": [0, 10]}))[0]
    assert "must be >= 0" in errors_of(_transfer(freeze={"int": [-1, 2]}))[0]


def test_freeze_that_fits_or_never_applies_passes():
    parse_study(_transfer(freeze={"int": [0, 9], "when": {"backbone": "efficientnet_b0"}},
                          backbone={"choice": ["resnet18", "efficientnet_b0"]}))
    parse_study(_transfer(freeze=5))  # a linear probe
    raw = _transfer(freeze=99)
    raw["model"]["family"] = "cnn"  # freeze is not a cnn option: nothing to check
    parse_study(raw)


def test_published_stage_names_match_the_networks():
    from tunetrack.models.transfer import stages

    assert {name: tuple(s.name for s in stages(name)) for name in choices.BACKBONES} == \
        choices.BACKBONE_STAGES


# ---------------------------------------------------------------------------- weights


def test_missing_weights_file_is_named_after_expansion_for_each_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("TT_WEIGHTS", str(tmp_path))
    (tmp_path / "resnet18.pth").write_bytes(b"only its existence is checked here")
    raw = _transfer(weights="${TT_WEIGHTS}/{backbone}.pth",
                    backbone={"choice": ["resnet18", "mobilenet_v3_small"]})
    (line,) = errors_of(raw)
    assert line == (f"model.weights: {tmp_path}/mobilenet_v3_small.pth is not a file (a "
                    f"state_dict saved with torch.save, or a torchvision weights name such as "
                    f"DEFAULT or IMAGENET1K_V1)")
    (tmp_path / "mobilenet_v3_small.pth").touch()
    parse_study(raw)
    choice = _transfer(weights={"choice": [None, "DEFAULT", str(tmp_path / "gone.pth")]})
    assert errors_of(choice) == [f"model.weights.choice: {tmp_path}/gone.pth is not a file (a "
                                 f"state_dict saved with torch.save, or a torchvision weights "
                                 f"name such as DEFAULT or IMAGENET1K_V1)"]


@pytest.mark.parametrize("name", ["DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"])
def test_weights_names_are_not_files(name):
    parse_study(_transfer(weights=name))  # torchvision's cache is the trial's business


def test_unset_variable_in_weights_is_an_error(monkeypatch):
    monkeypatch.delenv("TT_NOT_SET", raising=False)
    assert errors_of(_transfer(weights="${TT_NOT_SET}/w.pth")) == [
        "model.weights: environment variable TT_NOT_SET is not set "
        "(used in '${TT_NOT_SET}/w.pth')"]


# ---------------------------------------------------------------------- command line


BAD = {
    "augment": ({"train": {"augment": {"crop_scale": 1.5}}}, "train.augment.crop_scale"),
    "freeze": ({"model": {"family": "torchvision", "freeze": {"int": [0, 6]}}},
               "model.freeze.int: model.freeze 6 is too large for backbone resnet18"),
    "weights": ({"model": {"family": "torchvision", "weights": "missing/{backbone}.pth"}},
                "model.weights: missing/resnet18.pth is not a file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_run_stops_before_any_study_row_or_mlflow_run(case, uri, tmp_path):
    overrides, needle = BAD[case]
    raw = tiny_study(**overrides, tracking={"enabled": True})
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(raw))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.storages.RDBStorage(storage)  # an existing, empty storage: a row would show
    result = runner.invoke(app, ["run", str(file), "--storage", storage, "--tracking-uri", uri,
                                 "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert needle in result.stderr
    assert optuna.get_all_study_summaries(storage) == []
    client = MlflowClient(uri)
    experiments = client.search_experiments()
    assert [e.name for e in experiments] == ["Default"]
    assert client.search_runs([e.experiment_id for e in experiments]) == []
    validate = runner.invoke(app, ["validate", str(file)])
    assert validate.exit_code == 2 and needle in validate.stderr


def test_validate_checks_transfer_and_augment_without_torch(tmp_path):
    (tmp_path / "resnet18.pth").touch()
    good = tiny_study(model={"family": "torchvision", "freeze": {"int": [0, 5]},
                             "weights": str(tmp_path / "{backbone}.pth")},
                      train={"augment": {"crop_scale": {"float": [0.5, 1.0]}}})
    bad = {**good, "model": {**good["model"], "freeze": 6}}
    files = []
    for name, raw in (("good", good), ("bad", bad)):
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump(raw))
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from tunetrack.search.cli import app\n"
        f"good = CliRunner().invoke(app, ['validate', {str(files[0])!r}])\n"
        "assert good.exit_code == 0, good.output\n"
        f"bad = CliRunner().invoke(app, ['validate', {str(files[1])!r}])\n"
        "assert bad.exit_code == 2 and 'allowed: 0..5' in bad.output, bad.output\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', "
        "'mlflow'})\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(tmp_path))
