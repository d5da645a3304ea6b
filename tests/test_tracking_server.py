"""StudyTracker against a real `mlflow server` (HTTP REST + proxied artifacts)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from mlflow import MlflowClient

from tunetrack.models import DataConfig
from tunetrack.tracking import StudyTracker, promote
from tunetrack.tracking import tags as T

from .support import free_port
from .tracking_support import log_trial

pytestmark = pytest.mark.slow  # a server start alone takes 10-30 s on a small machine



def get_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={
        "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def server(tmp_path, template_db, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(template_db, tmp_path / "server.db")
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError("mlflow server did not start:\n" + (
                    tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.3)
        yield uri
    finally:
        with_group = process.poll() is None
        if with_group:
            os.killpg(process.pid, signal.SIGTERM)  # the server and the workers it started
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        log.close()


def test_study_through_a_tracking_server(server, tmp_path):
    tracker = StudyTracker(study_name="remote", tracking_uri=server)
    tracker.check_reachable()
    study = optuna.create_study(study_name="remote", direction="maximize")
    parent = tracker.start_study(study)
    data = DataConfig(name="synthetic", n_samples=240, n_classes=3, shape=(1, 6, 6))
    number = log_trial(tracker, study, data, epochs=3, lr=1e-2, width=16)
    run_id = study.trials[number].user_attrs[T.ATTR_RUN_ID]
    tracker.finish_study(study)

    experiment = get_json(f"{server}/api/2.0/mlflow/experiments/get-by-name?"
                          f"experiment_name=remote")["experiment"]
    found = get_json(f"{server}/api/2.0/mlflow/runs/search",
                     {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    by_role = {next(t["value"] for t in r["data"]["tags"] if t["key"] == T.ROLE): r
               for r in found}
    assert set(by_role) == {"parent", "trial"}
    child = by_role["trial"]
    assert child["info"]["status"] == "FINISHED"
    assert {"key": T.PARENT_RUN_ID, "value": parent} in child["data"]["tags"]
    metrics = {m["key"]: m for m in child["data"]["metrics"]}
    assert metrics["val_accuracy"]["step"] == 2 and "test_accuracy" in metrics
    assert by_role["parent"]["info"]["status"] == "FINISHED"
    artifacts = {a.path for a in MlflowClient(server).list_artifacts(run_id)}
    assert {"curves.png", "confusion_matrix.png", "trial.yaml"} <= artifacts

    result = promote(study, model_name="remote-clf", tracking_uri=server)
    assert result.promoted and result.version == "1"
    assert result.candidate_accuracy == MlflowClient(server).get_run(
        run_id).data.metrics["test_accuracy"]
