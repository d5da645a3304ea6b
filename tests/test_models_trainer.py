"""Trainer behaviour: early stopping, callbacks, L1, non-finite losses, batch paths, evaluate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tunetrack.models import (
    AugmentConfig,
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    TrainConfig,
    Trainer,
    create,
    load_splits,
)
from tunetrack.models.batches import ResidentBatches, StreamingBatches
from tunetrack.models.data import Split, Splits
from tunetrack.models.optimizers import build_optimizer, l1_penalty
from tunetrack.models.trainer_core import CPU_EVAL_BATCH


@pytest.fixture(scope="module")
def noisy():
    # 3x3 pixels under heavy noise: classes overlap, a wide net overfits within ~5 epochs
    return load_splits(DataConfig(name="synthetic", n_samples=150, n_classes=4, shape=(1, 3, 3)))


def _model(splits, seed=0, **model):
    cfg = ModelConfig(**{"width": 32, "depth": 1, **model})
    return create(cfg, splits.input_shape, splits.n_classes, splits.mean, splits.std, seed=seed)


def _train_cfg(**train) -> TrainConfig:
    return TrainConfig(**{"device": "cpu", "batch_size": 16, **train})


class Recorder:
    """Callback that keeps every EpochResult and the model's val outputs after each epoch."""

    def __init__(self, model, x, stop_at: int | None = None):
        self.model, self.x, self.stop_at = model, x, stop_at
        self.results, self.outputs = [], []

    def on_epoch_end(self, result) -> bool:
        self.results.append(result)
        self.model.eval()
        with torch.no_grad():
            self.outputs.append(self.model(self.x).clone())
        return self.stop_at is not None and result.epoch >= self.stop_at


# ---------------------------------------------------------------- epochs and callbacks


def test_history_holds_one_sane_result_per_epoch(splits):
    model = _model(splits)
    rec = Recorder(model, splits.val.x)
    res = Trainer(model, _train_cfg(max_epochs=4, lr=1e-2), splits, callbacks=[rec]).fit()
    assert res.stop_reason == "max_epochs" and res.epochs_run == 4
    assert [h.epoch for h in res.history] == [0, 1, 2, 3]
    assert rec.results == res.history  # the callback saw every epoch, in order
    for h in res.history:
        assert 0 <= h.train_accuracy <= 1 and 0 <= h.val_accuracy <= 1
        assert h.train_loss > 0 and h.val_loss > 0 and h.epoch_seconds > 0
        assert h.val_accuracy * len(splits.val) == pytest.approx(
            round(h.val_accuracy * len(splits.val)))
        assert set(h.metrics()) == {"train_loss", "train_accuracy", "val_loss",
                                    "val_accuracy", "lr", "epoch_seconds"}
    assert res.history[-1].train_loss < res.history[0].train_loss  # it learns


def test_callback_returning_true_stops_training(splits):
    model = _model(splits)
    stopper = Recorder(model, splits.val.x, stop_at=2)
    watcher = Recorder(model, splits.val.x)  # after the stopper: still called that epoch
    res = Trainer(model, _train_cfg(max_epochs=10), splits, callbacks=[stopper, watcher]).fit()
    assert res.stop_reason == "callback"
    assert res.epochs_run == 3
    assert len(watcher.results) == 3


def test_early_stopping_stops_after_patience_and_restores_best_weights(splits):
    # min_delta=1 on accuracy: nothing after epoch 0 counts as an improvement
    es = EarlyStoppingConfig(patience=3, min_delta=1.0, monitor="val_accuracy")
    model = _model(splits)
    rec = Recorder(model, splits.val.x)
    res = Trainer(model, _train_cfg(max_epochs=20, lr=1e-2, early_stopping=es), splits,
                  callbacks=[rec]).fit()
    assert res.stop_reason == "early_stopping"
    assert res.epochs_run == 4  # epoch 0 is best, epochs 1, 2, 3 without improvement
    assert res.best_epoch == 0 and res.best is res.history[0]
    assert "3 epochs" in res.message and "val_accuracy" in res.message
    model.eval()
    with torch.no_grad():
        out = model(splits.val.x)
    assert torch.equal(out, rec.outputs[0])
    assert not torch.allclose(out, rec.outputs[-1])  # training had moved on


@pytest.mark.parametrize(("gamma", "epochs"), [(0.5, 8), (0.6, 5)])
def test_a_scheduled_lr_drop_restarts_patience(splits, gamma, epochs):
    # nothing improves after epoch 0 (min_delta=1); StepLR cuts the LR before epoch 4: a cut
    # to half or less gives 4 more epochs (4..7), a milder one changes nothing (stop after 5)
    es = EarlyStoppingConfig(patience=4, min_delta=1.0, monitor="val_accuracy")
    cfg = _train_cfg(max_epochs=20, lr=1e-2, scheduler="step", step_size=4, step_gamma=gamma,
                     early_stopping=es)
    res = Trainer(_model(splits), cfg, splits).fit()
    assert res.stop_reason == "early_stopping"
    assert res.epochs_run == epochs
    assert [h.lr for h in res.history[3:5]] == pytest.approx([1e-2, 1e-2 * gamma])


def test_early_stopping_on_val_loss_picks_the_minimum(noisy):
    model = _model(noisy, width=256, depth=2)
    es = EarlyStoppingConfig(patience=3, monitor="val_loss")
    rec = Recorder(model, noisy.val.x)
    cfg = _train_cfg(max_epochs=40, lr=1e-3, early_stopping=es)
    trainer = Trainer(model, cfg, noisy, callbacks=[rec])
    res = trainer.fit()
    losses = [h.val_loss for h in res.history]
    assert res.stop_reason == "early_stopping"
    assert res.best_epoch == losses.index(min(losses)) >= 1
    assert res.epochs_run == res.best_epoch + 3 + 1
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(noisy.val.x), rec.outputs[res.best_epoch])
        assert not torch.allclose(model(noisy.val.x), rec.outputs[-1])
    # and evaluating the restored model reproduces the best epoch's numbers
    ev = trainer.evaluate(noisy.val)
    assert ev.loss == pytest.approx(res.best.val_loss, rel=1e-5)
    assert ev.accuracy == pytest.approx(res.best.val_accuracy)


def test_without_patience_the_best_epoch_is_still_restored(noisy):
    model = _model(noisy, width=256, depth=2)
    rec = Recorder(model, noisy.val.x)
    res = Trainer(model, _train_cfg(max_epochs=15, lr=1e-3), noisy, callbacks=[rec]).fit()
    losses = [h.val_loss for h in res.history]
    assert res.stop_reason == "max_epochs" and res.epochs_run == 15
    assert 1 <= res.best_epoch == losses.index(min(losses)) < 14
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(noisy.val.x), rec.outputs[res.best_epoch])


def test_min_delta_counts_only_large_enough_improvements(splits):
    es = EarlyStoppingConfig(patience=2, min_delta=10.0, monitor="val_loss")
    res = Trainer(_model(splits), _train_cfg(max_epochs=10, early_stopping=es), splits).fit()
    assert res.best_epoch == 0 and res.epochs_run == 3
    assert res.stop_reason == "early_stopping"


# ---------------------------------------------------------------- L1


def test_l1_penalty_adds_l1_times_sign_to_weight_gradients_only(splits):
    model = _model(splits, depth=2)
    x, y = splits.train.x, splits.train.y

    def grads(l1: float) -> dict[str, torch.Tensor]:
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        (loss + l1 * l1_penalty(model) if l1 else loss).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, with_l1 = grads(0.0), grads(0.01)
    params = dict(model.named_parameters())
    n_weights = 0
    for name, p in params.items():
        if p.dim() > 1:
            n_weights += 1
            assert torch.allclose(with_l1[name] - plain[name], 0.01 * p.sign(), atol=1e-6)
        else:  # biases are not penalised
            assert torch.equal(with_l1[name], plain[name])
    assert n_weights == 3
    expected = sum(p.abs().sum() for p in params.values() if p.dim() > 1)
    assert l1_penalty(model).item() == pytest.approx(expected.item(), rel=1e-6)


def test_trainer_adds_the_l1_term_to_the_step_but_not_to_train_loss(splits):
    # one full-batch SGD step: the only difference between the runs is -lr * l1 * sign(w0)
    lr, l1 = 0.1, 0.05
    w0 = _model(splits)
    runs = {}
    for penalty in (0.0, l1):
        model = _model(splits)
        cfg = _train_cfg(max_epochs=1, optimizer="sgd", momentum=0.0, lr=lr, l1=penalty,
                         batch_size=len(splits.train))
        runs[penalty] = (model, Trainer(model, cfg, splits).fit())
    (plain, res0), (regular, res1) = runs[0.0], runs[l1]
    for (name, p0), pa, pb in zip(w0.named_parameters(), plain.parameters(),
                                  regular.parameters(), strict=True):
        expected = -lr * l1 * p0.sign() if p0.dim() > 1 else torch.zeros_like(p0)
        assert torch.allclose(pb - pa, expected, atol=1e-6), name
    assert res1.history[0].train_loss == pytest.approx(res0.history[0].train_loss, rel=1e-6)


def test_training_with_l1_shrinks_the_weights(splits):
    norms = {}
    for l1 in (0.0, 1e-3):
        model = _model(splits, width=64)
        Trainer(model, _train_cfg(max_epochs=10, lr=1e-2, l1=l1), splits).fit()
        norms[l1] = l1_penalty(model).item()
    assert norms[1e-3] < 0.8 * norms[0.0]


# ---------------------------------------------------------------- non-finite losses


def test_exploding_lr_is_reported_not_raised(splits):
    res = Trainer(_model(splits), _train_cfg(max_epochs=20, optimizer="sgd", lr=1e6), splits).fit()
    assert res.stop_reason == "non_finite"
    assert res.epochs_run < 20
    last = res.history[-1]
    assert not (math.isfinite(last.train_loss) and math.isfinite(last.val_loss))
    assert "non-finite loss" in res.message and "lr=1e+06" in res.message
    assert "\n" not in res.message


def test_poisoned_data_is_reported_at_epoch_0(splits):
    x = splits.train.x.clone()
    x[3, 0, 2, 2] = float("nan")
    poisoned = Splits(train=Split(x, splits.train.y), val=splits.val, test=splits.test,
                      classes=splits.classes, mean=splits.mean, std=splits.std,
                      fingerprint="poisoned")
    res = Trainer(_model(splits), _train_cfg(max_epochs=5), poisoned).fit()
    assert res.stop_reason == "non_finite" and res.epochs_run == 1
    assert res.best_epoch is None and res.best is None
    assert "epoch 0" in res.message


# ---------------------------------------------------------------- resident vs streaming


def test_resident_and_streaming_paths_train_identically(splits):
    results, finals = {}, {}
    for stream in (False, True):
        model = _model(splits, family="cnn", width=8, depth=2, batch_norm=True)
        cfg = _train_cfg(max_epochs=4, batch_size=13, stream=stream, lr=3e-3, seed=5,
                         augment=AugmentConfig(flip=True, crop_padding=1, brightness=0.2))
        trainer = Trainer(model, cfg, splits)
        assert isinstance(trainer.train_data, StreamingBatches if stream else ResidentBatches)
        results[stream] = trainer.fit()
        finals[stream] = trainer.evaluate(splits.test)
    a, b = results[False], results[True]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        assert [getattr(h, key) for h in a.history] == pytest.approx(
            [getattr(h, key) for h in b.history], rel=1e-5, abs=1e-6), key
    assert a.best_epoch == b.best_epoch
    assert torch.equal(finals[False].predictions, finals[True].predictions)
    assert torch.allclose(finals[False].probabilities, finals[True].probabilities, atol=1e-5)


def test_same_seed_reproduces_other_seed_differs(splits):
    def run(seed):
        cfg = _train_cfg(max_epochs=3, seed=seed)
        return [h.train_loss for h in Trainer(_model(splits), cfg, splits).fit().history]

    assert run(1) == run(1)
    assert run(1) != run(2)  # a different batch order


def test_both_paths_yield_every_sample_once_per_pass(splits):
    n = len(splits.train)  # 66 = 5 * 13 + 1: training drops the 1-sample tail batch
    for data in (ResidentBatches(splits.train, torch.device("cpu")),
                 StreamingBatches(splits.train, torch.device("cpu"))):
        train = list(data.iterate(13, torch.Generator().manual_seed(0)))
        assert [len(y) for _, y in train] == [13] * 5
        evaluation = list(data.iterate(13))
        assert sum(len(y) for _, y in evaluation) == n
        assert torch.equal(torch.cat([x for x, _ in evaluation]), splits.train.x)


# ---------------------------------------------------------------- evaluate


@pytest.mark.parametrize("eval_batch_size", [4096, 7, 14])  # 15 test samples: 14 leaves 1
def test_evaluate_scores_every_sample(splits, eval_batch_size):
    model = _model(splits)
    trainer = Trainer(model, _train_cfg(max_epochs=2, eval_batch_size=eval_batch_size), splits)
    trainer.fit()
    ev = trainer.evaluate(splits.test)
    assert len(ev.predictions) == len(splits.test) == 15
    model.eval()
    with torch.no_grad():
        logits = model(splits.test.x)
    assert torch.equal(ev.predictions, logits.argmax(1))
    assert ev.loss == pytest.approx(F.cross_entropy(logits, splits.test.y).item(), rel=1e-5)
    assert ev.accuracy == pytest.approx((logits.argmax(1) == splits.test.y).float().mean().item())
    assert torch.allclose(ev.probabilities, logits.softmax(1), atol=1e-6)
    assert ev.probabilities.shape == (15, 4)


def test_cpu_caps_the_eval_batch(splits):
    big = Trainer(_model(splits), _train_cfg(eval_batch_size=4096, device="cpu"), splits)
    small = Trainer(_model(splits), _train_cfg(eval_batch_size=7, device="cpu"), splits)
    assert (big.eval_batch_size, small.eval_batch_size) == (CPU_EVAL_BATCH, 7)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_use_fused_kernels_unless_told_not_to(splits, name):
    params = list(_model(splits).parameters())
    cfg = _train_cfg(optimizer=name)
    assert build_optimizer(params, cfg).defaults["fused"] is True
    assert not build_optimizer(params, cfg, textbook=True).defaults["fused"]


def test_validation_uses_every_val_sample(splits):
    # 15 val samples with eval batches of 7 -> 7, 7, 1: the 1-sample batch must count
    model = _model(splits)
    trainer = Trainer(model, _train_cfg(max_epochs=1, eval_batch_size=7), splits)
    res = trainer.fit()
    model.eval()
    with torch.no_grad():
        logits = model(splits.val.x)
    assert res.history[0].val_loss == pytest.approx(
        F.cross_entropy(logits, splits.val.y).item(), rel=1e-5)


def test_training_on_cpu_flushes_denormals_and_restores_the_setting(splits):
    """Denormal floats cost ~100 cycles per operation on x86: a converging MLP's epochs
    slowed 1.7x without flushing them (models/device.py)."""
    seen = []

    class Probe:
        def on_epoch_end(self, result):
            seen.append(float(torch.tensor([1e-39]) * 1.0))  # a denormal result
            return False

    model = create(ModelConfig(width=8, depth=1), splits.input_shape, splits.n_classes,
                   splits.mean, splits.std, seed=0)
    Trainer(model, TrainConfig(max_epochs=1, device="cpu"), splits, callbacks=[Probe()]).fit()
    assert seen == [0.0]  # flushed to zero while training
    assert float(torch.tensor([1e-39]) * 1.0) > 0  # and not afterwards
