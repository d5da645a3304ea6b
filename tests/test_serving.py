"""From champion to service: a champion promoted from a short study, served by the real
`tunetrack serve`, answers PNG images and pixel arrays as `tunetrack predict` does, and bad
requests with one-line 400s; the same model loads where tunetrack cannot be imported, and
so does a user's network torch.export cannot trace (pickled, its module beside it)."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from tunetrack.models import DataConfig, ModelConfig, create
from tunetrack.search.cli import app
from tunetrack.tracking import StudyTracker, promote
from tunetrack.tracking.registry import log_pytorch_model

from .support import free_port
from .tracking_support import cached_splits, log_trial

DIGITS = DataConfig(name="digits")
NAME = "serve-clf"
GATE_NET = '''
import torch
from torch import nn


class GateNet(nn.Module):
    """Picks its path by the batch's values: torch.export cannot trace that."""

    def __init__(self, num_classes, in_shape):
        super().__init__()
        self.linear = nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes)

    def forward(self, x):
        logits = self.linear(x.flatten(1))
        return -logits if float(x.mean()) > 10 else logits
'''


@pytest.fixture(scope="module")
def champion(tmp_path_factory, template_db):
    """A store with `serve-clf@champion` (digits MLP, 3 epochs) and 8 test digits as PNGs."""
    import shutil

    root = tmp_path_factory.mktemp("serving")
    shutil.copy(template_db, root / "mlflow.db")
    uri = f"sqlite:///{root}/mlflow.db"
    study = optuna.create_study(study_name="serve", direction="maximize")
    tracker = StudyTracker(study_name="serve", tracking_uri=uri, log_models="best")
    tracker.start_study(study)
    log_trial(tracker, study, DIGITS, epochs=3, lr=1e-2)
    assert promote(study, model_name=NAME, tracking_uri=uri).promoted
    splits = cached_splits(DIGITS)
    (root / "images").mkdir()
    for i, image in enumerate(splits.test.x[:8]):
        Image.fromarray(np.round(image[0].numpy() * 255).astype(np.uint8), mode="L").save(
            root / "images" / f"{i}.png")
    return root, uri


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _post(port: int, body: bytes, kind: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_until_up(server: subprocess.Popen, port: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[0]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"tunetrack serve did not answer /ping within {timeout} s")


def test_serve_the_champion(champion):
    root, uri = champion
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tunetrack.search.cli", "serve", f"models:/{NAME}@champion",
         "--port", str(port), "--tracking-uri", uri, "--max-body-mb", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # while the server starts: what `tunetrack predict` says about the same files
        files = sorted((root / "images").glob("*.png"))
        cli = CliRunner().invoke(app, ["predict", f"models:/{NAME}@champion",
                                       str(root / "images"), "--classes", "10",
                                       "--format", "json", "--tracking-uri", uri])
        assert cli.exit_code == 0, cli.output
        expected = json.loads(cli.stdout)
        assert [Path(p["image"]) for p in expected] == files
        _wait_until_up(server, port)

        images = [base64.b64encode(f.read_bytes()).decode() for f in files]
        status, answer = _post(port, json.dumps({"dataframe_split": {
            "columns": ["image"], "data": [[i] for i in images]}}).encode())
        assert status == 200, answer
        rows = answer["predictions"]
        assert [r["label"] for r in rows] == [p["label"] for p in expected]
        for row, cli_row in zip(rows, expected, strict=True):
            assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            assert row["probability"] == pytest.approx(cli_row["probability"], abs=1e-6)
            assert {c["label"]: pytest.approx(c["probability"], abs=1e-6)
                    for c in cli_row["predictions"]} == row["probabilities"]

        # arrays in the raw scale (digits: 0..16): labels of the bare network
        splits = cached_splits(DIGITS)
        raw = np.round(splits.test.x[:8].numpy() * 16).astype(np.uint8)
        network = torch.export.load(next(
            Path(MlflowClient(uri).get_model_version_download_uri(NAME, "1").removeprefix(
                "file://")).rglob("model.pt2"))).module()
        with torch.inference_mode():
            labels = [splits.classes[i] for i in network(torch.from_numpy(raw / 16.0).float())
                      .argmax(1).tolist()]
        for layout in (raw[:, 0], raw, raw.transpose(0, 2, 3, 1)):
            status, answer = _post(port, json.dumps({"inputs": layout.tolist()}).encode())
            assert status == 200, answer
            assert [r["label"] for r in answer["predictions"]] == labels
        # the same batch as one .npy body (the binary door): the same answer
        status, as_npy = _post(port, _npy(raw), "application/x-npy")
        assert status == 200 and as_npy == answer
        status, wrong = _post(port, _npy(raw[:, :, :3]), "application/x-npy")
        assert status == 400 and "must have shape" in wrong["message"]
        status, wrong = _post(port, b"not an array", "application/x-npy")
        assert status == 400 and wrong["message"].startswith("the body is not one .npy array")

        bad = {
            "not an image": json.dumps({"dataframe_split": {"columns": ["image"], "data": [[
                base64.b64encode(b"plain text").decode()]]}}).encode(),
            "wrong shape": json.dumps({"inputs": [[[0] * 7] * 8]}).encode(),
            "empty body": b"",
            "50 MB body": b"{" + b" " * (50 * 2**20) + b"}",
            "not JSON": b"\x00\xff garbage",
        }
        for case, body in bad.items():
            status, answer = _post(port, body)
            assert status == 400, (case, answer)
            assert set(answer) == {"error_code", "message"}, (case, answer)
            assert "\n" not in answer["message"] and "Traceback" not in answer["message"]
            assert len(answer["message"]) <= 300, (case, answer)
        assert "not a readable image" in _post(port, bad["not an image"])[1]["message"]
        assert "must have shape" in _post(port, bad["wrong shape"])[1]["message"]
        # and it keeps answering
        status, answer = _post(port, json.dumps({"inputs": raw[:1].tolist()}).encode())
        assert status == 200 and answer["predictions"][0]["label"] == labels[0]
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=60)[0]
    assert f"curl -s http://127.0.0.1:{port}/invocations" in output
    assert server.returncode == 0, output


@pytest.mark.slow  # a fresh interpreter importing mlflow and torch: test_serving_model.py
# checks the same promise statically (what pyfunc_classifier imports) in the fast suite
def test_models_load_where_tunetrack_cannot_be_imported(champion, tmp_path, monkeypatch):
    """The champion (pt2), and a user's network torch.export cannot trace (pickled, its
    module beside it as code), each answer in a fresh process that has only mlflow, torch,
    numpy, pandas and Pillow: tunetrack is hidden, the user's module is not on the path."""
    root, uri = champion
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "gate_net.py").write_text(GATE_NET)
    monkeypatch.syspath_prepend(str(tmp_path / "user"))
    splits = cached_splits(DIGITS)
    network = create(ModelConfig(class_path="gate_net.GateNet"), splits.input_shape,
                     splits.n_classes, splits.mean, splits.std, seed=0).eval()
    client = MlflowClient(uri)
    experiment = client.create_experiment("user-code")
    run = client.create_run(experiment).info.run_id
    model_id, fmt = log_pytorch_model(
        client, run_id=run, experiment_id=experiment, model=network,
        example=splits.test.x[:5].numpy(), metadata={
            "classes": splits.classes, "input_shape": list(splits.input_shape),
            "raw_scale": 16.0})
    assert fmt == "pickle"
    user_model = client.get_logged_model(model_id).artifact_location
    assert (Path(user_model.removeprefix("file://")) / "code" / "gate_net.py").is_file()
    with torch.inference_mode():
        user_labels = [splits.classes[i] for i in network(splits.test.x[:8]).argmax(1).tolist()]

    cli = CliRunner().invoke(app, ["predict", f"models:/{NAME}@champion", str(root / "images"),
                                   "--format", "json", "--tracking-uri", uri])
    champion_labels = [p["label"] for p in json.loads(cli.stdout)]
    script = textwrap.dedent(f"""
        import importlib.util, json, sys

        class Hidden:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "tunetrack":
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        sys.meta_path.insert(0, Hidden())
        assert importlib.util.find_spec("gate_net") is None
        try:
            import tunetrack  # noqa
            raise SystemExit("tunetrack is importable")
        except ModuleNotFoundError:
            pass
        from pathlib import Path
        import mlflow.pyfunc, numpy as np, pandas as pd
        images = pd.DataFrame({{"image": [p.read_bytes() for p in
                                          sorted(Path({str(root / "images")!r}).glob("*.png"))]}})
        champion = mlflow.pyfunc.load_model("models:/{NAME}@champion").predict(images)
        raw = np.asarray({np.round(splits.test.x[:8].numpy() * 16).astype(int).tolist()!r})
        user = mlflow.pyfunc.load_model({user_model!r}).predict(raw)
        print(json.dumps([champion["label"].tolist(), user["label"].tolist(),
                          sorted(m for m in sys.modules if m.startswith("tunetrack"))]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**env, "MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr[-3000:]
    champion_got, user_got, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert champion_got == champion_labels
    assert user_got == user_labels
    assert imported == []


def test_the_champion_version_and_run_tell_why(champion):
    _, uri = champion
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias(NAME, "champion")
    run = client.get_run(version.run_id)
    text = version.description
    assert text.startswith("**Promoted to @champion**") and "first champion" in text
    n = len(cached_splits(DIGITS).test)
    assert f"test accuracy {float(version.tags['test_accuracy']):.4f} on n = {n}" in text
    assert f"data fingerprint {version.tags['data_fingerprint']}" in text
    assert f"trial #{version.tags['tunetrack.trial']} of study **serve**" in text
    parent = run.data.tags["mlflow.parentRunId"]
    assert f"parent run {parent}" in text and f"run {version.run_id}" in text
    note = run.data.tags["mlflow.note.content"]
    assert f"{NAME} version {version.version}** (@champion)" in note
    assert (f"[Its study's trials](#/experiments/{run.info.experiment_id}/runs?"
            "workflowType=machine_learning&searchFilter=") in note
    assert f"(parent run {parent})" in note


def test_a_challenge_is_described_with_its_evidence():
    from tunetrack.tracking.registry.promotion import _evidence_entry
    from tunetrack.tracking.registry.promotion_notes import version_description
    from tunetrack.tracking.registry.promotion_stats import paired_evidence

    champion = np.array([1] * 90 + [0] * 10, dtype=bool)
    candidate = np.array([1] * 88 + [0] * 2 + [1] * 10, dtype=bool)
    evidence = paired_evidence(champion, candidate)
    decision = {"at": "2026-12-07T10:00:00+00:00", "alias": "champion", "study": "s",
                "trial": 7, "run_id": "r7", "n": 100, "candidate_test_accuracy": 0.98,
                "alpha": 0.05, "min_improvement": 0.01, "champion_version": "3",
                "reason": "difference +0.0800 >= min_improvement 0.01 and McNemar p = 0.0386 "
                          "< alpha 0.05", **_evidence_entry(evidence)}
    text = version_description(decision, fingerprint="fp", parent_run_id="p1",
                               experiment_id="4")
    assert "- n = 100 test images" in text
    assert "- candidate test accuracy 0.9800, champion (version 3) 0.9000" in text
    assert (f"- difference +0.0800, 95% paired bootstrap CI [{evidence.ci_low:+.4f}, "
            f"{evidence.ci_high:+.4f}]") in text
    assert f"exact McNemar p = {evidence.p_value:.4g} (b = 2 " in text and "c = 10 " in text
    assert "trial #7 of study **s** (experiment 4, parent run p1), run r7" in text
