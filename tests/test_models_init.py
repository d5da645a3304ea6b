"""Weight-initialisation schemes: the statistics each scheme promises, on a large layer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tunetrack.models import INIT_SCHEMES, ModelConfig, apply_init, create
from tunetrack.models.init_schemes import LEAKY_SLOPE

FAN_IN, FAN_OUT = 1024, 512  # 524,288 weights: sample std is within ~0.2% of the truth


def _layer(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(FAN_IN, FAN_OUT)


def _init(scheme: str, activation: str = "relu") -> nn.Linear:
    layer = _layer()
    apply_init(nn.Sequential(layer), scheme, activation)
    return layer


def test_registry_lists_exactly_the_documented_schemes():
    assert set(INIT_SCHEMES) == {"default", "xavier_uniform", "xavier_normal",
                                 "kaiming_uniform", "kaiming_normal", "orthogonal"}


def test_default_leaves_pytorch_init_untouched():
    before = _layer()
    after = _init("default")
    assert torch.equal(before.weight, after.weight)
    assert torch.equal(before.bias, after.bias)
    # PyTorch's own Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    bound = 1 / math.sqrt(FAN_IN)
    assert after.weight.abs().max() <= bound
    assert after.weight.abs().max() > 0.99 * bound
    assert after.bias.abs().sum() > 0  # default keeps PyTorch's non-zero bias


def _check_uniform(w: torch.Tensor, bound: float) -> None:
    assert w.abs().max().item() <= bound * (1 + 1e-6)
    assert w.abs().max().item() > 0.999 * bound  # the full range is used
    assert abs(w.mean().item()) < 0.01 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.01)


def _check_normal(w: torch.Tensor, std: float) -> None:
    assert abs(w.mean().item()) < 0.01 * std
    assert w.std().item() == pytest.approx(std, rel=0.01)
    # normal, not uniform: mass beyond 3 std exists (a uniform with this std has none)
    assert (w.abs() > 2.5 * std).float().mean().item() == pytest.approx(0.0124, abs=0.002)


def test_xavier_uniform_bound():
    w = _init("xavier_uniform").weight
    _check_uniform(w, math.sqrt(6 / (FAN_IN + FAN_OUT)))


def test_xavier_normal_std():
    w = _init("xavier_normal").weight
    _check_normal(w, math.sqrt(2 / (FAN_IN + FAN_OUT)))


@pytest.mark.parametrize(("activation", "gain"), [
    ("relu", math.sqrt(2)),
    ("gelu", math.sqrt(2)),  # treated as relu
    ("tanh", 5 / 3),
    ("leaky_relu", math.sqrt(2 / (1 + LEAKY_SLOPE**2))),
])
def test_kaiming_normal_std_uses_activation_gain(activation, gain):
    w = _init("kaiming_normal", activation).weight
    _check_normal(w, gain / math.sqrt(FAN_IN))


@pytest.mark.parametrize(("activation", "gain"), [
    ("relu", math.sqrt(2)),
    ("tanh", 5 / 3),
])
def test_kaiming_uniform_bound_uses_activation_gain(activation, gain):
    w = _init("kaiming_uniform", activation).weight
    _check_uniform(w, gain * math.sqrt(3 / FAN_IN))


def test_orthogonal_rows_are_orthonormal():
    w = _init("orthogonal").weight  # (512, 1024): rows orthonormal
    gram = w @ w.T
    assert torch.allclose(gram, torch.eye(FAN_OUT), atol=1e-4)
    # and the square case: W W^T = W^T W = I
    square = nn.Linear(256, 256)
    apply_init(square, "orthogonal")
    assert torch.allclose(square.weight @ square.weight.T, torch.eye(256), atol=1e-4)
    assert torch.allclose(square.weight.T @ square.weight, torch.eye(256), atol=1e-4)


@pytest.mark.parametrize("scheme", ["xavier_uniform", "xavier_normal", "kaiming_uniform",
                                    "kaiming_normal", "orthogonal"])
def test_non_default_schemes_zero_every_bias_and_reach_convs(scheme):
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3)
    net = nn.Sequential(nn.Linear(8, 8), conv, nn.Sequential(nn.Linear(8, 4)))
    before = conv.weight.detach().clone()
    apply_init(net, scheme, "relu")
    for layer in (net[0], conv, net[2][0]):
        assert torch.count_nonzero(layer.bias) == 0
    assert not torch.equal(before, conv.weight)
    if scheme == "kaiming_normal":  # Conv fan_in = in_channels * k * k
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)


def test_create_applies_scheme_to_every_layer_and_is_seeded():
    cfg = ModelConfig(family="mlp", depth=2, width=600, init="kaiming_normal")
    a = create(cfg, (1, 20, 20), 10, seed=3)
    b = create(cfg, (1, 20, 20), 10, seed=3)
    c = create(cfg, (1, 20, 20), 10, seed=4)
    linears = [m for m in a.modules() if isinstance(m, nn.Linear)]
    assert [lin.in_features for lin in linears] == [400, 600, 600]
    for lin in linears:
        assert lin.weight.std().item() == pytest.approx(math.sqrt(2 / lin.in_features), rel=0.03)
        assert torch.count_nonzero(lin.bias) == 0
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb)
        if pa.dim() > 1:
            assert not torch.equal(pa, pc)


def test_create_with_seed_does_not_disturb_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create(ModelConfig(), (1, 8, 8), 10, seed=0)
    assert torch.equal(torch.rand(3), expected)
