"""A fused MLP group's written-out backward (`FusedNet.train_step`, models/fused_tape.py)
gives autograd's gradients, for every activation, with and without batch-norm, dropout,
label smoothing and mixup; groups it cannot run train through autograd."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tunetrack.models import DataConfig, ModelConfig, TrainConfig, TunetrackError, load_splits
from tunetrack.models.choices import ACTIVATIONS
from tunetrack.models.fused_net import FusedNet
from tunetrack.models.fused_train import FusedTrainer, Member, member_loss_grad, mixed_losses

CPU = torch.device("cpu")
SEEDS = (0, 1, 2)
# on CUDA too, where one is present (the tape runs there when autocast is off)
DEVICES = [CPU, pytest.param(torch.device("cuda"), marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


def _net(activation: str, batch_norm: bool, device: torch.device = CPU) -> FusedNet:
    base = ModelConfig(family="mlp", depth=2, width=12, activation=activation,
                       batch_norm=batch_norm)
    configs = [replace(base, dropout=p, init=init) for p, init in
               ((0.0, "default"), (0.3, "xavier_uniform"), (0.6, "orthogonal"))]
    return FusedNet.create(configs, SEEDS, (1, 4, 4), 5, [0.5], [0.25], device)


def _batch(mixup: bool, device: torch.device = CPU):
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(9, 1, 4, 4, generator=gen).to(device)
    y = torch.randint(0, 5, (9,), generator=gen).to(device)
    if not mixup:
        return x, ((y, 1.0),)
    lam = torch.tensor(0.7, device=device)
    return x, ((y, lam), (y.roll(1), 1 - lam))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_tape_gradients_are_autograds(activation, batch_norm, device):
    taped, graphed = _net(activation, batch_norm, device), _net(activation, batch_norm, device)
    assert taped.tapeable
    smoothing = torch.tensor([0.0, 0.1, 0.3], device=device)
    # the same kernels on CPU; on CUDA F.batch_norm runs cuDNN's, the tape torch's own
    logits_tol = 0 if device.type == "cpu" else 1e-5
    for mixup in (False, True):
        x, targets = _batch(mixup, device)
        taped.train(), graphed.train()
        taped.flat_grad.fill_(float("nan"))  # every element must be written, not added to
        losses, logits = taped.train_step(
            x, lambda z, t=targets: member_loss_grad(z, t, smoothing))
        graphed_logits = graphed(x)
        graphed_losses = mixed_losses(graphed_logits, targets, smoothing)
        graphed.flat_grad.zero_()
        graphed_losses.sum().backward()
        torch.testing.assert_close(logits, graphed_logits.detach(), rtol=logits_tol,
                                   atol=logits_tol)
        torch.testing.assert_close(losses, graphed_losses.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(taped.flat_grad, graphed.flat_grad, rtol=1e-5, atol=1e-7)
        for key, value in taped.stacked_buffers.items():  # running statistics moved alike
            torch.testing.assert_close(value, graphed.stacked_buffers[key])


def test_the_gradient_reaches_each_members_own_rows():
    """One member's loss moves only its own row of `flat_grad`."""
    net = _net("relu", True).train()
    x, targets = _batch(False)

    def member_one_only(z):
        losses, grad = member_loss_grad(z, targets, None)
        grad = grad * torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
        return losses, grad

    net.train_step(x, member_one_only)
    assert net.flat_grad[[0, 2]].abs().max() == 0
    assert net.flat_grad[1].abs().max() > 0


def test_only_mlp_groups_without_autocast_train_on_the_tape():
    splits = load_splits(DataConfig(name="synthetic", n_samples=48, n_classes=3))
    train = TrainConfig(device="cpu", batch_size=16, max_epochs=1)
    for family, taped in (("mlp", True), ("cnn", False)):
        model = ModelConfig(family=family, depth=1, width=4)
        members = [Member(model, replace(train, seed=s)) for s in SEEDS]
        trainer = FusedTrainer(members, splits, device=CPU)
        assert trainer.taped is taped
        if not taped:  # a convolution records no backward: refused, not wrong
            x, targets = splits.train.x[:16], ((splits.train.y[:16], 1.0),)
            with pytest.raises(TunetrackError, match="only MLP groups train on the tape"):
                trainer.net.train_step(x, lambda z, t=targets: member_loss_grad(z, t, None))
