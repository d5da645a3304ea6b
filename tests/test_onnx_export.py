"""`registry.export: [onnx]`: a promoted champion is logged as ONNX too, and only when
onnxruntime gives the torch network's probabilities within 1e-5 on every test image; a
network torch.onnx cannot translate is one line of `promote`'s output, nothing logged;
`validate` refuses an unknown format, or onnx without its packages, in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import mlflow.onnx
import onnxruntime
import pytest
import torch
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from tunetrack.models import DataConfig, ModelConfig, create, load_splits
from tunetrack.search.cli import app
from tunetrack.search.study_file import parse_study
from tunetrack.tracking.registry import log_onnx
from tunetrack.tracking.registry.onnx_export import DIFFERENCE_TAG, ONNX_TAG, TOLERANCE

from .studyfiles import tiny_study, write_study
from .support import errors_of

runner = CliRunner(env={"COLUMNS": "200"})
# a network with an op ONNX has no function for: torch.export takes it (the run's pt2
# model), torch.onnx does not
SVD_NET = '''
import torch
from torch import nn


class SvdNet(nn.Module):
    """Classifies an image by the singular values of its rows."""

    def __init__(self, num_classes, in_shape):
        super().__init__()
        self.linear = nn.Linear(min(in_shape[1], in_shape[2]), num_classes)

    def forward(self, x):
        return self.linear(torch.linalg.svdvals(x[:, 0]))
'''


def _promote(folder: Path, name: str, model: dict) -> tuple[str, str]:
    """Run a one-trial study of `model` on digits with `registry.export: [onnx]`, promote
    it; (promote's output, the MLflow store)."""
    file = write_study(folder, name, n_trials=1, max_epochs=2, model=model,
                       tracking={"enabled": True, "log_models": "best"},
                       registry={"model_name": f"{name}-clf", "export": ["onnx"]})
    uri, storage = f"sqlite:///{folder}/mlflow.db", f"sqlite:///{folder}/tunetrack.db"
    ran = runner.invoke(app, ["run", str(file), "--no-progress", "--storage", storage,
                              "--tracking-uri", uri])
    assert ran.exit_code == 0, ran.output
    promoted = runner.invoke(app, ["promote", name, "--storage", storage,
                                   "--tracking-uri", uri])
    assert promoted.exit_code == 0, promoted.output
    return promoted.stdout, uri


@pytest.mark.slow
def test_a_promoted_cnn_is_logged_as_onnx_that_answers_as_torch(tmp_path):
    cnn = {"family": "cnn", "depth": 1, "width": 8, "batch_norm": True}
    output, uri = _promote(tmp_path, "onnx-cnn", cnn)
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("onnx-cnn-clf", "champion")
    onnx_uri = version.tags[ONNX_TAG]
    assert f"onnx: logged as {onnx_uri}: max |p_onnx - p_torch| = " in output
    assert output.splitlines()[-1].startswith("onnx: logged")  # after the decision line
    assert float(version.tags[DIFFERENCE_TAG]) <= TOLERANCE

    # the logged model: MLflow's onnx flavor, one file, linked to the champion's run
    logged = client.get_logged_model(onnx_uri.removeprefix("models:/"))
    assert logged.source_run_id == version.run_id and logged.name == "onnx"
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=logged.artifact_location, dst_path=str(tmp_path / "onnx"),
        tracking_uri=uri))
    assert "onnx" in yaml.safe_load((local / "MLmodel").read_text())["flavors"]
    assert not [p.name for p in local.iterdir()
                if p.suffix not in (".onnx", ".json", ".txt", ".yaml") and p.name != "MLmodel"]

    # it loads in onnxruntime and answers as the torch champion on the whole test split
    splits = load_splits(DataConfig(name="digits"))
    session = onnxruntime.InferenceSession(str(local / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    x = splits.test.x.numpy()
    onnx_logits = torch.from_numpy(session.run(None, {"pixels": x})[0])
    network = mlflow.pytorch.load_model(
        client.get_model_version_download_uri("onnx-cnn-clf", version.version))
    with torch.inference_mode():
        torch_logits = network(splits.test.x)
    assert onnx_logits.shape == (len(x), 10)
    difference = (onnx_logits.double().softmax(1) - torch_logits.double().softmax(1)).abs()
    assert float(difference.max()) <= TOLERANCE
    assert torch.equal(onnx_logits.argmax(1), torch_logits.argmax(1))
    # and through MLflow's own onnx flavor
    assert mlflow.onnx.load_model(str(local)).graph.input[0].name == "pixels"


@pytest.mark.slow
def test_a_network_torch_onnx_cannot_translate_is_promoted_without_onnx(tmp_path):
    (tmp_path / "svd_net_onnx.py").write_text(SVD_NET)
    output, uri = _promote(tmp_path, "onnx-svd", {"class_path": "svd_net_onnx.SvdNet"})
    promoted, line = output.splitlines()[-2:]
    assert promoted.startswith("promoted trial #0 as onnx-svd-clf version 1 @champion")
    assert line.startswith("onnx: not exported: ") and "aten._linalg_svd" in line
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("onnx-svd-clf", "champion")
    assert ONNX_TAG not in version.tags and DIFFERENCE_TAG not in version.tags
    experiment = client.get_experiment_by_name("onnx-svd").experiment_id
    names = [m.name for m in client.search_logged_models(experiment_ids=[experiment])]
    assert names == ["model"]  # nothing logged for onnx, not even a FAILED model


def test_an_export_that_answers_differently_is_not_logged(uri, tmp_path):
    """A graph of another network (other weights) than the logits it is checked against:
    the check refuses it, names the difference, and logs nothing."""
    splits = load_splits(DataConfig(name="digits"))
    config = ModelConfig(depth=1, width=16)
    checked, other = (create(config, splits.input_shape, splits.n_classes, splits.mean,
                             splits.std, seed=seed).eval() for seed in (0, 1))
    with torch.inference_mode():
        reference = other(splits.test.x)
    client = MlflowClient(uri)
    experiment = client.create_experiment("differs",
                                          artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment).info.run_id
    outcome = log_onnx(client, run_id=run, experiment_id=experiment, network=checked,
                       x=splits.test.x, torch_logits=reference, metadata={})
    assert outcome.model_id is None
    assert outcome.line.startswith("onnx: not logged, it answers differently from torch: ")
    assert outcome.agreement.n == len(splits.test.x)
    assert outcome.agreement.max_probability_diff > 0.01  # other weights, other answers
    assert client.search_logged_models(experiment_ids=[experiment]) == []

    with torch.inference_mode():  # the same network: within the tolerance, and logged
        same = log_onnx(client, run_id=run, experiment_id=experiment, network=checked,
                        x=splits.test.x, torch_logits=checked(splits.test.x), metadata={})
    assert same.model_id is not None and same.agreement.max_probability_diff <= TOLERANCE
    assert client.get_logged_model(same.model_id).status == "READY"


def test_validate_refuses_an_unknown_export_format(tmp_path):
    raw = tiny_study(registry={"model_name": "m", "export": ["onnx", "tflite"]})
    assert errors_of(raw) == ["registry.export: unknown format 'tflite'; allowed: onnx"]
    file = write_study(tmp_path, registry={"model_name": "m", "export": ["torchscript"]})
    result = runner.invoke(app, ["validate", str(file)])
    assert result.exit_code == 2
    assert result.stderr == (f"{file}: registry.export: unknown format 'torchscript'; "
                             f"allowed: onnx\n")


def test_validate_says_when_the_onnx_packages_are_missing(monkeypatch):
    raw = tiny_study(registry={"model_name": "m", "export": ["onnx"]})
    assert parse_study(raw).registry.export == ["onnx"]  # all three are installed here
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what find_spec reports missing
    assert errors_of(raw) == ["registry.export: onnx needs onnxruntime, not installed here: "
                              "pip install 'tunetrack[onnx]'"]
