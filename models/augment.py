"""Batch augmentation on the training device: one affine warp, photometric jitter, mixing.

Random resized crop, crop-as-translation, flip and rotation are folded into a single
per-sample affine matrix and applied with one `grid_sample` call, so augmenting a whole batch
costs one kernel instead of a Python loop over images. Mixup and CutMix then mix the whole
batch with a permutation of itself and return soft targets (`Mix`).

The trainer calls this on the training split only; evaluation never augments. Every random
number comes from the generator it passes (seeded from `train.seed`, on the training
device), and nothing here reads a value back to the host, so the epoch loop stays free of
device synchronisation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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


def _resized_crop(n: int, h: int, w: int, cfg: AugmentConfig, like: torch.Tensor,
                  gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop (width, height) as fractions of the image and its centre in [-1, 1].

    Like torchvision's RandomResizedCrop: area uniform in [crop_scale, 1], aspect ratio
    (relative to the image's) log-uniform in [1/crop_ratio, crop_ratio]. A side longer than
    the image is clamped to it (torchvision re-draws instead). The centre is drawn so that
    every sampling point lies between the image's outer pixel centres: a crop never blends in
    the zero padding (no dark rim), it only zooms.
    """
    area = _uniform(n, cfg.crop_scale, 1.0, like, gen)
    log_ratio = math.log(cfg.crop_ratio)
    ratio = torch.exp(_uniform(n, -log_ratio, log_ratio, like, gen))
    cw = torch.sqrt(area * ratio).clamp_(max=1.0)
    ch = torch.sqrt(area / ratio).clamp_(max=1.0)
    cx = _uniform(n, -1.0, 1.0, like, gen) * (1 - cw) * (1 - 1 / w)
    cy = _uniform(n, -1.0, 1.0, like, gen) * (1 - ch) * (1 - 1 / h)
    return cw, ch, cx, cy


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Return an augmented copy of `x` (N, C, H, W, pixels in [0, 1])."""
    if not cfg.enabled:
        return x
    n, _, h, w = x.shape
    crop = cfg.crop_scale < 1
    if cfg.crop_padding or cfg.flip or cfg.rotation or crop:
        angle = _uniform(n, -cfg.rotation, cfg.rotation, x, gen) * (math.pi / 180.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        sx = torch.ones(n, device=x.device)
        if cfg.flip:
            sx = torch.where(torch.rand(n, device=x.device, generator=gen) < 0.5, -sx, sx)
        tx = _shift(n, cfg.crop_padding, w, x, gen)
        ty = _shift(n, cfg.crop_padding, h, x, gen)
        cw = ch = torch.ones(n, device=x.device)
        if crop:
            cw, ch, cx, cy = _resized_crop(n, h, w, cfg, x, gen)
            tx, ty = tx + cx, ty + cy
        # input coords = diag(cw, ch) @ rotation @ flip @ output coords + crop centre + shift
        theta = torch.stack([
            torch.stack([cw * cos * sx, -cw * sin, tx], dim=1),
            torch.stack([ch * sin * sx, ch * cos, ty], dim=1),
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


class Mix(NamedTuple):
    """A mixed batch: sample i is (mostly) `y_a[i]` blended with `y_b[i]`.

    `lam` is the weight of `y_a` (the batch's own labels), a 0-dim float32 tensor on the
    device, so the loss needs no host sync.
    """

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: torch.Tensor

    def loss(self, logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """lam * CE(y_a) + (1 - lam) * CE(y_b): cross-entropy against the mixed soft target
        (CE is linear in the target, so this equals CE with lam*onehot(a) + (1-lam)*onehot(b),
        label smoothing included)."""
        ce_a = F.cross_entropy(logits, self.y_a, label_smoothing=label_smoothing)
        ce_b = F.cross_entropy(logits, self.y_b, label_smoothing=label_smoothing)
        return self.lam * ce_a + (1 - self.lam) * ce_b

    def dominant_labels(self) -> torch.Tensor:
        """The label with the larger weight (y_a on a tie): what train accuracy counts."""
        return torch.where(self.lam >= 0.5, self.y_a, self.y_b)


def _beta(alpha: float, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One Beta(alpha, alpha) draw as a 0-dim float32 tensor on `like`'s device.

    Gamma ratio on the device with the trainer's generator (torch.distributions.Beta takes
    no generator, and a host-side draw would need its own seed); float64 so small alphas do
    not underflow both gammas to 0.
    """
    shape = torch.full((2,), float(alpha), dtype=torch.float64, device=like.device)
    g = torch._standard_gamma(shape, generator=gen)
    return (g[0] / g.sum()).nan_to_num_(0.5).float()


def _cutmix_keep(h: int, w: int, lam: torch.Tensor, like: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
    """(H, W) float mask, 0 inside the pasted box and 1 where the sample keeps its pixels.

    As in the CutMix paper (and timm): a box with sides sqrt(1 - lam) times the image's,
    centred uniformly, clipped to the image; the label weight is then recomputed from the
    mask, so it is exactly the fraction of pixels each label owns.
    """
    cut = torch.sqrt(1 - lam)
    half_h, half_w = torch.floor(h * cut / 2), torch.floor(w * cut / 2)
    cy = torch.randint(0, h, (), device=like.device, generator=gen)
    cx = torch.randint(0, w, (), device=like.device, generator=gen)
    rows = torch.arange(h, device=like.device)
    cols = torch.arange(w, device=like.device)
    in_rows = (rows >= cy - half_h) & (rows < cy + half_h)
    in_cols = (cols >= cx - half_w) & (cols < cx + half_w)
    return (~(in_rows[:, None] & in_cols[None, :])).float()


def mix_batch(x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig,
              gen: torch.Generator) -> Mix | None:
    """Mixup / CutMix of the batch with a permutation of itself; None when both are off.

    Each sample is paired with `x[perm]`. Mixup blends the images with one weight lam ~
    Beta(mixup_alpha, mixup_alpha) per batch; CutMix pastes one box of the partner. With
    both on, each batch uses one of them with probability 1/2 (timm's `switch_prob`). The
    choice, lam and the box stay tensors on the device: no host sync.
    """
    if not cfg.mixing:
        return None
    perm = torch.randperm(len(y), device=x.device, generator=gen)
    lam_mix = _beta(cfg.mixup_alpha, x, gen) if cfg.mixup_alpha else None
    keep = lam_cut = None
    if cfg.cutmix_alpha:
        keep = _cutmix_keep(x.shape[-2], x.shape[-1], _beta(cfg.cutmix_alpha, x, gen), x, gen)
        lam_cut = keep.mean()
    if lam_mix is not None and keep is not None:
        use_cutmix = torch.rand((), device=x.device, generator=gen) < 0.5
        weight = torch.where(use_cutmix, keep, lam_mix)
        lam = torch.where(use_cutmix, lam_cut, lam_mix)
    elif lam_mix is not None:
        weight = lam = lam_mix
    else:
        weight, lam = keep, lam_cut
    weight = weight.to(x.dtype)
    mixed = weight * x + (1 - weight) * x[perm]
    return Mix(mixed, y, y[perm], lam)
