"""StudyTracker + TrialRun end to end against a real SQLite MLflow store per test."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import mlflow.pytorch
import optuna
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from tunetrack.models import (
    DataConfig,
    EpochResult,
    ModelConfig,
    TrainConfig,
    TrialConfig,
)
from tunetrack.tracking import StudyTracker, compare_trials
from tunetrack.tracking import tags as T
from tunetrack.tracking.runs import model_wanted

from .tracking_support import cached_splits, run_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                 "epoch_seconds")
TRIAL_ARTIFACTS = {"trial.yaml", "confusion_matrix.png", "confusion_matrix.csv",
                   "classification_report.json", "per_class_error.csv", "curves.png",
                   "misclassified.png", "history.csv", "lr.png", "first_layer.png",
                   "feature_maps.png", "per_class_error.png"}
DIGITS = DataConfig(name="digits")


@pytest.fixture(scope="module")
def splits():
    return cached_splits(DIGITS)


def artifact_names(client: MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


def test_study_end_to_end(uri, splits, monkeypatch, tmp_path):
    study = optuna.create_study(study_name="e2e", direction="maximize")
    tracker = StudyTracker(study_name="e2e", tracking_uri=uri)
    tracker.check_reachable()
    parent = tracker.start_study(study)
    assert study.user_attrs[T.ATTR_PARENT_RUN_ID] == parent
    outcomes = ["complete", "prune", "fail", "complete"]
    runs = {}
    for lr, outcome in zip([0.05, 0.02, 0.01, 0.003], outcomes, strict=True):
        number, run, _ = run_trial(tracker, study, DIGITS, lr=lr, outcome=outcome, seed=None)
        runs[number] = run
    tracker.finish_study(study)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("e2e")
    assert experiment.artifact_location.startswith(Path(uri[10:]).parent.as_uri())
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 4
    for trial in study.trials:
        run_id = trial.user_attrs[T.ATTR_RUN_ID]
        assert run_id == runs[trial.number].run_id
        run = client.get_run(run_id)
        tags, params = run.data.tags, run.data.params
        assert run.info.run_name == f"trial-{trial.number}"
        assert tags[T.PARENT_RUN_ID] == parent
        assert tags[T.OPTUNA_STUDY] == "e2e" and tags[T.OPTUNA_TRIAL] == str(trial.number)
        assert tags[T.DATA_FINGERPRINT] == splits.fingerprint
        assert tags[T.DEVICE] == "cpu" and tags[T.TORCH_VERSION] == torch.__version__
        assert T.CUDA_VERSION in tags and tags[T.ROLE] == T.ROLE_TRIAL
        assert params["train.lr"] == str(trial.params["train.lr"])
        assert params[T.TRIAL_NUMBER_PARAM] == str(trial.number)
        for key in EPOCH_METRICS:  # the failing trial raised after epoch 1 was logged
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == [0, 1], key
        state = {TrialState.COMPLETE: ("COMPLETE", "FINISHED"),
                 TrialState.PRUNED: ("PRUNED", "KILLED"),
                 TrialState.FAIL: ("FAIL", "FAILED")}[trial.state]
        assert (tags[T.OPTUNA_STATE], run.info.status) == state
        names = artifact_names(client, run_id)
        if trial.state == TrialState.COMPLETE:
            assert names >= TRIAL_ARTIFACTS
            assert {"test_accuracy", "test_loss", "best_epoch", "epochs_run", "param_count",
                    "best_val_accuracy", "best_val_loss"} <= set(run.data.metrics)
            report = json.loads(Path(client.download_artifacts(
                run_id, "classification_report.json", str(tmp_path))).read_text())
            assert run.data.metrics["test_accuracy"] == pytest.approx(report["accuracy"])
            final = client.get_metric_history(run_id, "test_accuracy")[0]
            assert final.timestamp <= run.info.end_time  # ended after its slow-lane work
        else:
            assert names == {"trial.yaml"}
            assert "test_accuracy" not in run.data.metrics
    pruned = client.get_run(runs[1].run_id).data.tags
    assert "median pruner" in pruned[T.OPTUNA_REASON]
    assert "loss exploded" in client.get_run(runs[2].run_id).data.tags[T.OPTUNA_REASON]

    # trial.yaml replays the config; history.csv has one row per epoch
    local = Path(client.download_artifacts(runs[0].run_id, "trial.yaml", "."))
    assert TrialConfig.from_dict(yaml.safe_load(local.read_text())) == TrialConfig(
        data=DIGITS, model=ModelConfig(width=32, depth=1),
        train=TrainConfig(max_epochs=2, lr=0.05, device="cpu", seed=0))
    history = pd.read_csv(client.download_artifacts(runs[0].run_id, "history.csv", "."))
    assert list(history["epoch"]) == [0, 1]
    report = json.loads(Path(client.download_artifacts(
        runs[0].run_id, "classification_report.json", ".")).read_text())
    assert set(splits.classes) <= set(report)
    confusion = pd.read_csv(client.download_artifacts(runs[0].run_id, "confusion_matrix.csv",
                                                      "."), index_col=0)
    assert list(confusion.columns) == splits.classes
    assert confusion.to_numpy().sum() == len(splits.test)

    # the first completed trial was the best so far: its model is logged and reproduces
    # the recorded test accuracy exactly
    first = client.get_run(runs[0].run_id)
    model_id = first.data.tags[T.MODEL_ID]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for model_uri in (f"models:/{model_id}", f"runs:/{runs[0].run_id}/model"):
        model = mlflow.pytorch.load_model(model_uri)
        with torch.no_grad():
            predictions = model(splits.test.x).argmax(1)
        accuracy = int((predictions == splits.test.y).sum()) / len(splits.test)
        assert accuracy == first.data.metrics["test_accuracy"], model_uri
    info = mlflow.models.get_model_info(f"models:/{model_id}")
    # the pyfunc takes images or arrays (an input example shows the images); its answer:
    assert [c["name"] for c in info.signature.outputs.to_dict()] == [
        "label", "probability", "probabilities"]
    assert info.metadata["tunetrack"]["classes"] == splits.classes

    # the parent: plots, trials.csv with run ids, best params, FINISHED
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    names = artifact_names(client, parent)
    for plot in ("optimization_history", "intermediate_values", "timeline"):
        assert {f"{plot}.html", f"{plot}.png"} <= names, plot
    for plot in ("parallel_coordinate", "slice"):  # HTML only: their PNG twins cost seconds
        assert f"{plot}.html" in names and f"{plot}.png" not in names, plot
    assert "param_importances.html" in names or "param_importances" in parent_run.data.tags.get(
        "tunetrack.plots_skipped", "")
    trials_csv = pd.read_csv(client.download_artifacts(parent, "trials.csv", "."))
    assert dict(zip(trials_csv["number"], trials_csv["mlflow_run_id"], strict=True)) == {
        n: r.run_id for n, r in runs.items()}
    best = study.best_trial
    assert parent_run.data.tags["best.trial_number"] == str(best.number)
    assert parent_run.data.tags["best.train.lr"] == str(best.params["train.lr"])
    assert parent_run.data.metrics["best_value"] == best.value
    assert parent_run.data.metrics["n_trials_pruned"] == 1
    if "matplotlib.pyplot" in sys.modules:  # no figure left open anywhere
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []

    # compare_trials: completed by value (maximize), then pruned, then failed
    table = compare_trials(study, tracking_uri=uri)
    completed = sorted((t for t in study.trials if t.state == TrialState.COMPLETE),
                       key=lambda t: -t.value)
    assert list(table["number"]) == [t.number for t in completed] + [1, 2]
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    assert table["test_accuracy"].iloc[0] == client.get_run(
        completed[0].user_attrs[T.ATTR_RUN_ID]).data.metrics["test_accuracy"]
    assert list(table["epochs"][:3]) == [2, 2, 2]
    assert {"value", "duration_s", "run_id", "train.lr"} <= set(table.columns)
    assert len(compare_trials(study, tracking_uri=uri, top=1)) == 1


def test_parent_run_is_shared_by_racing_workers(uri):
    trackers = [StudyTracker(study_name="shared", tracking_uri=uri) for _ in range(4)]
    studies = [optuna.create_study(study_name="shared") for _ in trackers]
    trackers[0].client.search_experiments()  # let the workers race on runs, not imports
    barrier, results = threading.Barrier(len(trackers)), {}

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = trackers[i].start_study(studies[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(trackers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(set(results.values())) == 1
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("shared")
    parents = client.search_runs([experiment.experiment_id], "tags.`tunetrack.role` = 'parent'")
    assert [r.info.run_id for r in parents] == [results[0]]
    # a later worker (or a resumed study) joins the same parent
    assert StudyTracker(study_name="shared", tracking_uri=uri).start_study(
        optuna.create_study(study_name="shared")) == results[0]


WORKER = """
import os, sys, time
import optuna
from tunetrack.tracking import StudyTracker
tracker = StudyTracker(study_name="procs", tracking_uri=sys.argv[1])
tracker.client.search_experiments()
open(os.path.join(sys.argv[2], str(os.getpid())), "w").close()
while len(os.listdir(sys.argv[2])) < 3:  # all workers start together
    time.sleep(0.01)
print(tracker.start_study(optuna.create_study(study_name="procs")))
"""


def test_parent_run_is_shared_by_racing_processes(uri, tmp_path):
    (tmp_path / "ready").mkdir()
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, uri, str(tmp_path / "ready")],
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    ids = {w.communicate(timeout=120)[0].strip() for w in workers}
    assert all(w.returncode == 0 for w in workers)
    assert len(ids) == 1
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("procs")
    parents = client.search_runs([experiment.experiment_id], "tags.`tunetrack.role` = 'parent'")
    assert [r.info.run_id for r in parents] == list(ids)


def fake_epoch(epoch: int, value: float) -> EpochResult:
    return EpochResult(epoch=epoch, train_loss=1 - value, train_accuracy=value,
                       val_loss=1 - value, val_accuracy=value, lr=0.01, epoch_seconds=0.01)


def test_orphans_and_wait_false_are_settled_by_finish_study(uri):
    study = optuna.create_study(study_name="orphans")
    tracker = StudyTracker(study_name="orphans", tracking_uri=uri, log_models="none")
    tracker.start_study(study)
    cfg = TrialConfig()
    killed = study.ask()
    orphan = tracker.trial_run(killed, {}, cfg, device="cpu", data_fingerprint="f")
    assert orphan.on_epoch_end(fake_epoch(0, 0.5)) is False
    study.tell(killed, state=TrialState.FAIL)  # e.g. failed by a heartbeat; run never ended
    quick = study.ask()
    run = tracker.trial_run(quick, {}, cfg, device="cpu", data_fingerprint="f")
    run.on_epoch_end(fake_epoch(0, 0.7))
    run.end("PRUNED", "pruned")
    run.end("COMPLETE")  # idempotent: the first end wins
    study.tell(quick, state=TrialState.PRUNED)
    tracker.finish_study(study)
    client = MlflowClient(uri)
    ended = client.get_run(orphan.run_id)
    assert ended.info.status == "FAILED" and ended.data.tags[T.OPTUNA_STATE] == "FAIL"
    assert "left RUNNING" in ended.data.tags[T.OPTUNA_REASON]
    pruned = client.get_run(run.run_id)
    assert pruned.info.status == "KILLED" and pruned.data.tags[T.OPTUNA_STATE] == "PRUNED"
    assert [m.step for m in client.get_metric_history(run.run_id, "val_accuracy")] == [0]
    skipped = client.get_run(tracker.parent_run_id).data.tags["tunetrack.plots_skipped"]
    assert "no completed trial" in skipped


def test_multi_objective_study_logs_a_pareto_front(uri):
    study = optuna.create_study(study_name="multi", directions=["maximize", "minimize"])
    tracker = StudyTracker(study_name="multi", experiment="multi-exp", tracking_uri=uri)
    tracker.start_study(study)
    for accuracy, size in [(0.9, 100.0), (0.8, 10.0), (0.7, 200.0)]:
        trial = study.ask()
        trial.suggest_int("model.width", 8, 256)
        run = tracker.trial_run(trial, trial.params, TrialConfig(), device="cpu",
                                data_fingerprint="f")
        run.on_epoch_end(fake_epoch(0, accuracy))
        run.end("COMPLETE")
        study.tell(trial, [accuracy, size])
    assert model_wanted("best", study, [0.85, 5.0])
    assert not model_wanted("best", study, [0.6, 300.0])
    tracker.finish_study(study)
    client = MlflowClient(uri)
    parent = client.get_run(tracker.parent_run_id)
    assert client.get_experiment(parent.info.experiment_id).name == "multi-exp"
    names = artifact_names(client, tracker.parent_run_id)
    assert {"pareto_front.csv", "pareto_front.html", "pareto_front.png", "trials.csv"} <= names
    front = pd.read_csv(client.download_artifacts(tracker.parent_run_id, "pareto_front.csv", "."))
    assert sorted(front["number"]) == [0, 1]
    assert "multi-objective" in parent.data.tags["tunetrack.plots_skipped"]
    assert parent.data.metrics["pareto_front_size"] == 2


def test_model_wanted_follows_the_policy_and_direction():
    study = optuna.create_study(direction="minimize")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    assert model_wanted("best", study, 0.4) and model_wanted("best", study, 0.5)
    assert not model_wanted("best", study, 0.6)
    assert model_wanted("all", study, 0.9)
    assert not model_wanted("none", study, 0.1)


def test_compare_trials_reads_mlflow_when_attributes_are_missing(uri):
    study = optuna.create_study(study_name="cmp", direction="minimize")
    tracker = StudyTracker(study_name="cmp", tracking_uri=uri)
    tracker.start_study(study)
    for loss in (0.3, 0.1, 0.2):
        trial = study.ask()
        run = tracker.trial_run(trial, {}, TrialConfig(), device="cpu", data_fingerprint="f")
        tracker.client.log_metric(run.run_id, "test_accuracy", 1 - loss)
        run.end("COMPLETE")
        study.tell(trial, loss)
    table = compare_trials(study, tracking_uri=uri)
    assert list(table["number"]) == [1, 2, 0]
    assert list(table["test_accuracy"]) == pytest.approx([0.9, 0.8, 0.7])


def test_parent_stays_running_while_a_trial_of_the_study_runs(uri, splits):
    """Workers finish at different times: only the last one's finish closes the parent."""
    study = optuna.create_study(study_name="staggered", direction="maximize")
    tracker = StudyTracker(study_name="staggered", tracking_uri=uri)
    parent = tracker.start_study(study)
    run_trial(tracker, study, DIGITS, lr=0.05, epochs=1)
    other_worker = study.ask()  # still RUNNING elsewhere
    tracker.finish_study(study)
    client = MlflowClient(uri)
    assert client.get_run(parent).info.status == "RUNNING"
    assert "optimization_history.html" in artifact_names(client, parent)  # plots so far
    study.tell(other_worker, 0.5)
    tracker.finish_study(study)
    assert client.get_run(parent).info.status == "FINISHED"


def test_the_local_store_is_written_in_wal_mode(uri, splits):
    import sqlite3

    study = optuna.create_study(study_name="wal", direction="maximize")
    tracker = StudyTracker(study_name="wal", tracking_uri=uri)
    tracker.start_study(study)
    run_trial(tracker, study, DIGITS, lr=0.05, epochs=1)
    tracker.finish_study(study)
    with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
