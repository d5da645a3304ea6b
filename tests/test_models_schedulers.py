"""The LR the Trainer records per epoch is the one PyTorch documents for each scheduler."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tunetrack.models import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    Trainer,
    create,
    load_splits,
)

LR = 0.1


def _fit(splits, model: nn.Module | None = None, **train):
    cfg = TrainConfig(**{"optimizer": "sgd", "lr": LR, "momentum": 0.0, "batch_size": 16,
                         "device": "cpu", **train})
    if model is None:
        model = create(ModelConfig(width=8, depth=1), splits.input_shape, splits.n_classes,
                       splits.mean, splits.std, seed=0)
    trainer = Trainer(model, cfg, splits)
    return trainer, trainer.fit()


def _lrs(result) -> list[float]:
    return [h.lr for h in result.history]


def test_none_keeps_lr_constant(splits):
    _, res = _fit(splits, max_epochs=4, scheduler="none")
    assert _lrs(res) == [LR] * 4


def test_step_lr(splits):
    _, res = _fit(splits, max_epochs=7, scheduler="step", step_size=3, step_gamma=0.5)
    expected = [LR * 0.5 ** (e // 3) for e in range(7)]
    assert _lrs(res) == pytest.approx(expected, rel=1e-9)
    assert _lrs(res)[:4] == pytest.approx([0.1, 0.1, 0.1, 0.05])


def test_exponential_lr(splits):
    _, res = _fit(splits, max_epochs=6, scheduler="exponential", exp_gamma=0.8)
    assert _lrs(res) == pytest.approx([LR * 0.8**e for e in range(6)], rel=1e-9)


def test_cosine_annealing_closed_form(splits):
    epochs, eta_min = 8, 0.01
    _, res = _fit(splits, max_epochs=epochs, scheduler="cosine", cosine_eta_min=eta_min)
    expected = [eta_min + (LR - eta_min) * (1 + math.cos(math.pi * e / epochs)) / 2
                for e in range(epochs)]
    assert _lrs(res) == pytest.approx(expected, rel=1e-6)


def _onecycle_reference(epochs: int, steps_per_epoch: int, pct_start: float) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, total_steps=epochs * steps_per_epoch, pct_start=pct_start)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        for _ in range(steps_per_epoch):
            opt.step()
            if sched.last_epoch + 1 < sched.total_steps:
                sched.step()
    return out


@pytest.mark.parametrize("batch_size", [16, 13])
def test_onecycle_steps_per_batch(splits, batch_size):
    # 66 train samples: batch 16 -> 5 batches (last has 2); batch 13 -> 5 full batches and a
    # 1-sample remainder the trainer drops (it breaks batch norm), so still 5 optimizer steps
    assert len(splits.train) == 66
    epochs, pct = 6, 0.3
    trainer, res = _fit(splits, max_epochs=epochs, scheduler="onecycle", onecycle_pct_start=pct,
                        batch_size=batch_size)
    steps = 5
    assert _lrs(res) == pytest.approx(_onecycle_reference(epochs, steps, pct), rel=1e-9)
    assert res.history[0].lr == pytest.approx(LR / 25)  # initial_lr = max_lr / div_factor
    # the schedule runs to its end: every step but the last one was taken
    assert trainer.scheduler.last_epoch == epochs * steps - 1
    assert trainer.scheduler.total_steps == epochs * steps
    # a per-epoch schedule would be far off: the peak comes inside epoch 1 (step 9 of 30)
    assert max(_lrs(res)) < LR
    assert trainer.optimizer.param_groups[0]["lr"] < LR / 25


class FrozenNet(nn.Module):
    """Fixed logits whatever the optimizer does: val_loss is exactly constant."""

    def __init__(self, n_in: int, n_classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(n_in, n_classes).requires_grad_(False)
        self.dummy = nn.Parameter(torch.zeros(()))  # gets a zero gradient

    def forward(self, x):
        return self.head(x.flatten(1)) + 0 * self.dummy


def test_plateau_reduces_after_patience_epochs_without_improvement(splits):
    patience, factor, epochs = 2, 0.5, 9
    frozen = FrozenNet(math.prod(splits.input_shape), splits.n_classes)
    _, res = _fit(splits, model=frozen, max_epochs=epochs,
                  scheduler="plateau", plateau_patience=patience, plateau_factor=factor)
    losses = [h.val_loss for h in res.history]
    assert len(set(losses)) == 1  # really a plateau
    # epoch 0 sets the best; epochs 1..3 are bad; after the 3rd bad one (> patience) the LR
    # halves, so it is in effect from epoch 4; the counter restarts: next cut from epoch 7
    assert _lrs(res) == pytest.approx([0.1] * 4 + [0.05] * 3 + [0.025] * 2, rel=1e-9)


def test_plateau_follows_pytorch_on_the_recorded_val_losses():
    # noisy 3x3 data and a high SGD LR: val_loss improves, then turns up and wobbles
    noisy = load_splits(DataConfig(name="synthetic", n_samples=150, n_classes=4,
                                   shape=(1, 3, 3)))
    model = create(ModelConfig(width=64, depth=2), noisy.input_shape, noisy.n_classes,
                   noisy.mean, noisy.std, seed=0)
    _, res = _fit(noisy, model=model, max_epochs=12, scheduler="plateau", momentum=0.9,
                  plateau_patience=1, plateau_factor=0.5)
    losses = [h.val_loss for h in res.history]
    # replay PyTorch's own scheduler on the recorded losses: same LR sequence
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)
    expected = []
    for loss in losses:
        expected.append(opt.param_groups[0]["lr"])
        ref.step(loss)
    assert _lrs(res) == pytest.approx(expected, rel=1e-9)
    assert _lrs(res)[0] == LR and min(_lrs(res)) <= LR / 4  # it did reduce, more than once
    # the first cut comes in effect patience + 2 epochs after the best epoch so far: the
    # best, then patience + 1 bad epochs, then the new LR
    first_cut = next(e for e, lr in enumerate(_lrs(res)) if lr < LR)
    best_before = losses.index(min(losses[:first_cut]))
    assert first_cut == best_before + 1 + 2 >= 3
