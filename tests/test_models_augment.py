"""Batch augmentation: each transform does what its config says, seeded and in range."""

from __future__ import annotations

import pytest
import torch

from tunetrack.models import AugmentConfig
from tunetrack.models.augment import augment_batch


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.rand(64, 3, 9, 10, generator=_gen(42))


def test_disabled_config_returns_the_input_untouched(batch):
    cfg = AugmentConfig()
    assert not cfg.enabled
    gen = _gen()
    state = gen.get_state()
    assert augment_batch(batch, cfg, gen) is batch
    assert torch.equal(gen.get_state(), state)  # no random numbers consumed


def test_everything_on_keeps_shape_dtype_and_range(batch):
    cfg = AugmentConfig(crop_padding=2, flip=True, rotation=15, brightness=0.5, contrast=0.5)
    original = batch.clone()
    out = augment_batch(batch, cfg, _gen())
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(batch, original)  # not modified in place
    assert not torch.allclose(out, batch)


def test_rotation_alone_stays_in_range_and_pivots_on_the_centre():
    x = torch.rand(32, 1, 9, 9, generator=_gen(1))
    out = augment_batch(x, AugmentConfig(rotation=30), _gen())
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[..., 4, 4], x[..., 4, 4], atol=1e-5)  # centre is fixed
    assert not torch.allclose(out, x, atol=1e-3)


def test_seeded_generator_is_reproducible(batch):
    cfg = AugmentConfig(crop_padding=2, flip=True, rotation=10, brightness=0.3, contrast=0.3)
    a = augment_batch(batch, cfg, _gen(7))
    b = augment_batch(batch, cfg, _gen(7))
    c = augment_batch(batch, cfg, _gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_flip_only_gives_the_image_or_its_mirror(batch):
    out = augment_batch(batch, AugmentConfig(flip=True), _gen())
    mirrored = torch.flip(batch, dims=[-1])
    same = (out - batch).flatten(1).abs().amax(1) < 1e-5
    flipped = (out - mirrored).flatten(1).abs().amax(1) < 1e-5
    assert bool((same | flipped).all())  # exact flips, no interpolation blur
    assert 16 <= int(flipped.sum()) <= 48  # about half of 64
    # a whole batch of flipped samples is torch.flip of that batch
    assert torch.allclose(out[flipped], torch.flip(batch[flipped], dims=[-1]), atol=1e-5)


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = x[i + dy, j + dx], zero outside."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    yt, xt = slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx))
    out[..., ys, xs] = x[..., yt, xt]
    return out


def test_crop_padding_is_a_whole_pixel_translation(batch):
    pad = 2
    out = augment_batch(batch, AugmentConfig(crop_padding=pad), _gen())
    shifts = set()
    for x, y in zip(batch, out, strict=True):
        matches = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                   if torch.allclose(y, _shifted(x, dy, dx), atol=1e-5)]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) >= 10  # the 25 shifts are all in play, not one fixed offset


def test_brightness_scales_each_sample_by_one_factor():
    x = torch.rand(32, 3, 6, 6, generator=_gen(3)) * 0.5 + 0.1  # 1.5 * 0.6 < 1: no clamping
    b = 0.5
    out = augment_batch(x, AugmentConfig(brightness=b), _gen())
    ratio = (out / x).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
    factors = ratio[:, 0]
    assert factors.min() >= 1 - b - 1e-6 and factors.max() <= 1 + b + 1e-6
    assert factors.std() > 0.1  # per sample, not one factor for the batch


def test_contrast_scales_around_each_sample_mean():
    x = torch.rand(32, 3, 6, 6, generator=_gen(4)) * 0.2 + 0.4  # no clamping at c <= 1.5
    c = 0.5
    out = augment_batch(x, AugmentConfig(contrast=c), _gen())
    mean_in = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(out.mean(dim=(1, 2, 3), keepdim=True), mean_in, atol=1e-5)
    centred_in, centred_out = x - mean_in, out - mean_in
    # one factor per sample (least squares), and it explains the output exactly
    factor = ((centred_out * centred_in).sum(dim=(1, 2, 3), keepdim=True)
              / (centred_in**2).sum(dim=(1, 2, 3), keepdim=True))
    assert torch.allclose(out, mean_in + factor * centred_in, atol=1e-5)
    assert factor.min() >= 1 - c - 1e-4 and factor.max() <= 1 + c + 1e-4
    assert factor.std() > 0.1


def test_brightness_clamps_to_one():
    x = torch.full((16, 1, 4, 4), 0.9)
    out = augment_batch(x, AugmentConfig(brightness=0.9), _gen())
    assert out.max() == 1.0 and out.min() >= 0.09 - 1e-6
