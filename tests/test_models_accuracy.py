"""End-to-end on scikit-learn digits: fixed, sensible configs reach known test accuracy on CPU.

Each config was checked on seeds 0-4 (MLP worst 0.978, CNN worst 0.989 at the time of
writing); the bars below leave room for platform-level numeric differences.
"""

from __future__ import annotations

import time

import pytest
import torch

from tunetrack.models import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    Trainer,
    classification_metrics,
    create,
    load_splits,
)


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataConfig(name="digits", seed=0))


def _fit_and_test(splits, model_cfg: ModelConfig, train_cfg: TrainConfig):
    torch.manual_seed(train_cfg.seed)  # dropout draws from the global generator
    model = create(model_cfg, splits.input_shape, splits.n_classes, splits.mean, splits.std,
                   seed=train_cfg.seed)
    start = time.perf_counter()
    trainer = Trainer(model, train_cfg, splits)
    result = trainer.fit()
    evaluation = trainer.evaluate(splits.test)
    return result, evaluation, time.perf_counter() - start


def test_mlp_reaches_96_percent(digits):
    result, ev, seconds = _fit_and_test(
        digits,
        ModelConfig(family="mlp", depth=2, width=256, batch_norm=True, dropout=0.2),
        TrainConfig(max_epochs=30, batch_size=64, optimizer="adam", lr=2e-3,
                    scheduler="cosine", device="cpu", seed=0),
    )
    assert result.stop_reason == "max_epochs"
    assert ev.accuracy >= 0.96
    assert result.best.val_accuracy >= 0.96
    assert seconds < 60
    # the report agrees with the evaluation
    report = classification_metrics(digits.test.y, ev.predictions, digits.classes)
    assert report.accuracy == pytest.approx(ev.accuracy)
    assert report.confusion.sum() == len(digits.test) == 270
    assert report.confusion.trace() == round(ev.accuracy * 270)
    assert max(report.per_class_error.values()) < 0.2


def test_cnn_reaches_97_percent(digits):
    result, ev, seconds = _fit_and_test(
        digits,
        ModelConfig(family="cnn", depth=2, width=32, batch_norm=True),
        TrainConfig(max_epochs=15, batch_size=64, optimizer="adam", lr=3e-3, device="cpu",
                    seed=0),
    )
    assert ev.accuracy >= 0.97
    assert result.best.val_accuracy >= 0.97
    assert seconds < 60


def test_resnet_learns_digits(digits):
    _, ev, _ = _fit_and_test(
        digits,
        ModelConfig(family="resnet", depth=2, width=16, batch_norm=True),
        TrainConfig(max_epochs=6, batch_size=64, optimizer="adam", lr=3e-3, device="cpu"),
    )
    assert ev.accuracy >= 0.9
