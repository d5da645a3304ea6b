"""Batch augmentation on the training device: one affine warp + photometric jitter.

Crop (as a random translation), flip and rotation are folded into a single per-sample
affine matrix and applied with one `grid_sample` call, so augmenting a whole batch costs
one kernel instead of a Python loop over images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import AugmentConfig


def _uniform(n: int, low: float, high: float, like: torch.Tensor,
             gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, device=like.device, generator=gen) * (high - low) + low


def _shift(n: int, pad: int, size: int, like: torch.Tensor,
           gen: torch.Generator) -> torch.Tensor:
    """Whole-pixel shifts in [-pad, pad], in grid_sample's [-1, 1] coordinates."""
    if not pad:
        return torch.zeros(n, device=like.device)
    steps = torch.randint(-pad, pad + 1, (n,), device=like.device, generator=gen)
    return steps.float() * (2.0 / size)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Return an augmented copy of `x` (N, C, H, W, pixels in [0, 1])."""
    if not cfg.enabled:
        return x
    n, _, h, w = x.shape
    if cfg.crop_padding or cfg.flip or cfg.rotation:
        angle = _uniform(n, -cfg.rotation, cfg.rotation, x, gen) * (math.pi / 180.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        sx = torch.ones(n, device=x.device)
        if cfg.flip:
            sx = torch.where(torch.rand(n, device=x.device, generator=gen) < 0.5, -sx, sx)
        tx = _shift(n, cfg.crop_padding, w, x, gen)
        ty = _shift(n, cfg.crop_padding, h, x, gen)
        theta = torch.stack([
            torch.stack([cos * sx, -sin, tx], dim=1),
            torch.stack([sin * sx, cos, ty], dim=1),
        ], dim=1).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.contrast:
        c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, x, gen).view(-1, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean
    if cfg.brightness:
        x = x * _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, x, gen).view(-1, 1, 1, 1)
    return x.clamp_(0.0, 1.0) if (cfg.contrast or cfg.brightness) else x
