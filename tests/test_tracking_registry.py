"""promote() and predict() against a real SQLite registry per test."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from tunetrack.models import DataConfig, TunetrackError
from tunetrack.tracking import StudyTracker, predict, promote
from tunetrack.tracking import tags as T

from .tracking_support import cached_splits, log_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)




DIGITS = DataConfig(name="digits")


def new_study(name: str, uri: str, log_models: str = "best"):
    study = optuna.create_study(study_name=name, direction="maximize")
    tracker = StudyTracker(study_name=name, tracking_uri=uri, log_models=log_models)
    tracker.start_study(study)
    return study, tracker


def versions(client: MlflowClient, name: str) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))


def test_promotion_history(uri):
    client = MlflowClient(uri)
    study, tracker = new_study("reg", uri)
    weak = log_trial(tracker, study, DIGITS, epochs=1, lr=1e-3)

    first = promote(study, model_name="digits-clf", tracking_uri=uri)
    assert first.promoted and first.version == "1" and first.champion_accuracy is None
    assert "first champion" in first.message
    champion = client.get_model_version_by_alias("digits-clf", "champion")
    assert str(champion.version) == "1"
    assert champion.tags[T.TRIAL] == str(weak) and champion.tags[T.STUDY] == "reg"
    assert float(champion.tags["test_accuracy"]) == pytest.approx(first.candidate_accuracy)
    recorded = client.get_run(study.trials[weak].user_attrs[T.ATTR_RUN_ID]).data.metrics
    assert first.candidate_accuracy == recorded["test_accuracy"]  # same split, same model
    assert {T.DATA_FINGERPRINT, "val_accuracy", "objective_value"} <= set(champion.tags)
    assert client.get_registered_model("digits-clf").tags[T.STUDY] == "reg"

    again = promote(study, model_name="digits-clf", tracking_uri=uri)
    assert not again.promoted and "already" in again.message
    assert versions(client, "digits-clf") == ["1"]

    strong = log_trial(tracker, study, DIGITS, epochs=6, lr=1e-2)
    refused = promote(study, model_name="digits-clf", min_improvement=0.9, tracking_uri=uri)
    assert not refused.promoted and refused.version is None
    assert refused.candidate_accuracy > refused.champion_accuracy
    assert "min_improvement" in refused.message
    assert versions(client, "digits-clf") == ["1"]  # nothing registered when refused
    assert str(client.get_model_version_by_alias("digits-clf", "champion").version) == "1"

    better = promote(study, model_name="digits-clf", min_improvement=0.01, tracking_uri=uri)
    assert better.promoted and better.version == "2", better.message
    assert better.candidate_accuracy >= better.champion_accuracy + 0.01
    assert versions(client, "digits-clf") == ["1", "2"]
    new = client.get_model_version_by_alias("digits-clf", "champion")
    assert str(new.version) == "2" and new.tags[T.TRIAL] == str(strong)
    old = client.get_model_version("digits-clf", "1")
    assert old.tags["tunetrack.replaced_by.champion"] == "2"
    history = {k: json.loads(v) for k, v in client.get_registered_model("digits-clf").tags.items()
               if k.startswith("tunetrack.history.champion.")}
    # the refusal in between is kept too (decisions, not only promotions)
    assert [(h["decision"], h["version"]) for _, h in sorted(history.items())] == [
        ("promoted", "1"), ("refused", None), ("promoted", "2")]
    assert sorted(history.items())[2][1]["replaced"] == "1"

    # the best trial by value has no model: the best one with a model is used, and said so
    log_trial(tracker, study, DIGITS, epochs=1, lr=1e-3, value=2.0, log_model=False)
    note = promote(study, model_name="digits-clf", tracking_uri=uri)
    assert not note.promoted and "has no logged model" in note.message
    assert versions(client, "digits-clf") == ["1", "2"]


def write_pngs(folder: Path, images: torch.Tensor) -> list[Path]:
    folder.mkdir()
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:02d}.png"
        Image.fromarray(np.round(image[0].numpy() * 255).astype(np.uint8), mode="L").save(path)
        paths.append(path)
    return paths


def test_predict_with_the_champion(uri, tmp_path, monkeypatch):
    study, tracker = new_study("pred", uri)
    log_trial(tracker, study, DIGITS, epochs=3, lr=1e-2)
    assert promote(study, model_name="pred-clf", tracking_uri=uri).promoted
    splits = cached_splits(DIGITS)
    paths = write_pngs(tmp_path / "images", splits.test.x[:6])
    (tmp_path / "images" / ".hidden.png").write_bytes(b"")  # ignored

    results = predict("models:/pred-clf@champion", str(tmp_path / "images"), tracking_uri=uri)
    assert [r[0] for r in results] == [str(p) for p in paths]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pytorch.load_model("models:/pred-clf@champion")
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32)[None]
                                           / 255.0) for p in paths])
    with torch.no_grad():
        probabilities = model(pixels).softmax(1)
    for (_, top), probs in zip(results, probabilities, strict=True):
        assert len(top) == 3
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
        assert top[0][0] == splits.classes[int(probs.argmax())]
        assert top[0][1] == pytest.approx(float(probs.max()), rel=1e-5)
    single = predict("models:/pred-clf@champion", str(paths[0]), top=20, tracking_uri=uri)
    assert len(single) == 1 and len(single[0][1]) == len(splits.classes)

    with pytest.raises(TunetrackError, match="does not exist"):
        predict("models:/pred-clf@champion", str(tmp_path / "nope"), tracking_uri=uri)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TunetrackError, match="no image files"):
        predict("models:/pred-clf@champion", str(tmp_path / "empty"), tracking_uri=uri)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TunetrackError, match="not an image"):
        predict("models:/pred-clf@champion", str(tmp_path / "notes.txt"), tracking_uri=uri)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TunetrackError, match="cannot read image"):
        predict("models:/pred-clf@champion", str(tmp_path / "broken.png"), tracking_uri=uri)
    with pytest.raises(TunetrackError, match="cannot load model"):
        predict("models:/pred-clf@nobody", str(paths[0]), tracking_uri=uri)
    with pytest.raises(TunetrackError, match="top"):
        predict("models:/pred-clf@champion", str(paths[0]), top=0, tracking_uri=uri)


def test_promote_errors_change_nothing(uri, monkeypatch):
    client = MlflowClient(uri)
    empty = optuna.create_study(study_name="empty")
    with pytest.raises(TunetrackError, match="no completed trial"):
        promote(empty, model_name="m", tracking_uri=uri)

    study, tracker = new_study("nomodel", uri, log_models="none")
    log_trial(tracker, study, DIGITS, epochs=1, lr=1e-3)
    with pytest.raises(TunetrackError, match="logged model"):
        promote(study, model_name="m", tracking_uri=uri)

    with pytest.raises(TunetrackError, match="reserved"):
        promote(study, model_name="m", alias="latest", tracking_uri=uri)
    with pytest.raises(TunetrackError, match="min_improvement"):
        promote(study, model_name="m", min_improvement=-0.1, tracking_uri=uri)

    owner, owner_tracker = new_study("owner", uri)
    log_trial(owner_tracker, owner, DIGITS, epochs=1, lr=1e-3)
    assert promote(owner, model_name="owned", tracking_uri=uri).promoted
    intruder, intruder_tracker = new_study("intruder", uri)
    log_trial(intruder_tracker, intruder, DIGITS, epochs=1, lr=1e-3)
    with pytest.raises(TunetrackError, match="belongs to study 'owner'"):
        promote(intruder, model_name="owned", tracking_uri=uri)

    # a failure in the middle of registering leaves no version and no registered model
    def boom(*args, **kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", boom)
    with pytest.raises(RuntimeError, match="registry went away"):
        promote(intruder, model_name="fresh", tracking_uri=uri)
    assert client.search_registered_models("name = 'fresh'") == []
    with pytest.raises(RuntimeError, match="registry went away"):
        promote(owner, model_name="owned", alias="other", tracking_uri=uri)
    assert versions(client, "owned") == ["1"]


def test_champion_trained_on_other_data_is_not_compared(uri):
    synthetic = DataConfig(name="synthetic", n_samples=300, n_classes=3, shape=(1, 6, 6))
    study, tracker = new_study("fp", uri)
    log_trial(tracker, study, synthetic, epochs=3, lr=1e-2)
    assert promote(study, model_name="fp-clf", tracking_uri=uri).promoted
    # the same study name continued on other data (here: another in-memory study object)
    moved, moved_tracker = new_study("fp", uri)
    log_trial(moved_tracker, moved, DIGITS, epochs=1, lr=1e-3)
    result = promote(moved, model_name="fp-clf", tracking_uri=uri)
    assert not result.promoted and "other data" in result.message
    assert versions(MlflowClient(uri), "fp-clf") == ["1"]
