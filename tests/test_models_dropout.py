"""The networks' dropout (`models/dropout.py`): right rate, exact expectation, independent
lanes, reproducible from the trial's seed, and the layer `nets.create` builds."""

from __future__ import annotations

import pytest
import torch

from tunetrack.models import ModelConfig, create
from tunetrack.models.dropout import Dropout, Dropout2d, keep_mask, keep_threshold

N = 1 << 20


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_mask_keeps_the_right_fraction_and_keeps_the_expectation(p):
    mask = keep_mask((N,), p, generator=torch.Generator().manual_seed(1))
    t = keep_threshold(p)
    assert abs(t / 32768 - (1 - p)) <= 0.5 / 32768  # the rate resolved to 1/32768
    values = mask.unique().tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(32768 / t)]
    kept = (mask > 0).double()
    sigma = ((1 - p) * p / N) ** 0.5
    assert abs(kept.mean().item() - (1 - p)) < 5 * sigma
    # every 16-bit lane of the int64 words keeps at the same rate (the top lane has one
    # random bit less: a mask that used all 16 bits elsewhere would keep less there)
    for lane in range(4):
        assert abs(kept[lane::4].mean().item() - (1 - p)) < 5 * sigma * 2, lane
    assert abs(mask.double().mean().item() - 1.0) < 5 * sigma / (1 - p)


def test_neighbouring_elements_are_independent():
    kept = (keep_mask((N,), 0.5, generator=torch.Generator().manual_seed(2)) > 0).double()
    centred = kept - kept.mean()
    for shift in (1, 2, 3, 4):  # within a word (1-3) and across words (4)
        corr = (centred[:-shift] * centred[shift:]).mean() / centred.var()
        assert abs(corr.item()) < 5 / N**0.5, shift


def test_same_generator_state_gives_the_same_mask_and_shape():
    a = keep_mask((3, 5, 7), 0.4, generator=torch.Generator().manual_seed(3))
    b = keep_mask((3, 5, 7), 0.4, generator=torch.Generator().manual_seed(3))
    c = keep_mask((3, 5, 7), 0.4, generator=torch.Generator().manual_seed(4))
    assert a.shape == (3, 5, 7) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert keep_mask((2, 3), 0.4, dtype=torch.float64).dtype == torch.float64


def test_tiny_and_huge_rates():
    assert torch.equal(keep_mask((4, 4), 1e-6), torch.ones(4, 4))  # rounds to keep-all
    assert keep_threshold(0.99999) == 1  # at least one level: never a division by zero
    mask = keep_mask((N,), 0.99999, generator=torch.Generator().manual_seed(5))
    assert mask.max().item() == 32768.0 and (mask > 0).sum().item() < 100


def test_dropout_layer_draws_from_the_global_generator_and_is_identity_in_eval():
    x = torch.randn(64, 33)
    layer = Dropout(0.3)
    torch.manual_seed(7)
    out = layer(x)
    expected = x * keep_mask(x.shape, 0.3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out, expected)
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.05)
    layer.eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(Dropout(0.0)(x), x)


def test_dropout2d_drops_whole_channels():
    x = torch.rand(16, 8, 5, 5) + 0.1  # no zero inputs
    out = Dropout2d(0.5)(x)
    zeroed = (out == 0).flatten(2)
    assert torch.equal(zeroed.all(2), zeroed.any(2))  # a channel is all dropped or all kept
    assert 0 < zeroed.all(2).sum() < 16 * 8
    kept = ~zeroed.all(2)
    ratio = out.flatten(2)[kept] / x.flatten(2)[kept]
    assert torch.allclose(ratio, torch.full_like(ratio, 32768 / keep_threshold(0.5)))


@pytest.mark.parametrize("family", ["mlp", "cnn", "resnet"])
def test_networks_use_these_layers(family):
    net = create(ModelConfig(family=family, depth=2, width=8, dropout=0.2), (1, 8, 8), 4,
                 None, None, seed=0)
    kinds = {type(m) for m in net.modules()}
    assert Dropout in kinds
    assert (Dropout2d in kinds) == (family == "cnn")
    assert torch.nn.Dropout not in kinds and torch.nn.Dropout2d not in kinds
