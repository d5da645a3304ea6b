"""Dropout whose CPU masks cost a quarter of torch's: 15 random bits per element.

`nn.Dropout` draws its CPU mask with `bernoulli_`, element by element: 122-128 us for a
batch-64 x 258 mask on the 2-vCPU Intel Xeon VM (~7 ns per element), longer than that
layer's matrix products forward and backward. Here one `random_` on int64 words gives four
16-bit lanes per word; each element keeps the low 15 bits of its lane and is kept when they
fall under `keep_threshold(p)`, all in vectorised integer ops: 31 us for the same mask
(bench/README.md, "In the code").

The rate is resolved to 1/32768: an element is kept with probability t / 32768,
t = round((1 - p) * 32768), and scaled by 32768 / t, so the layer's expectation is exact;
the rate it applies differs from `p` by at most 1.5e-5.

The fused trainer (`fused_net`) draws each member's mask with `keep_mask` from the member's
own generator, the same calls the unfused network's `Dropout` makes on the global
generator, so a member sees the masks it would see alone. On CUDA and other devices the
layers run torch's own fused dropout kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

KEEP_BITS = 15
_LEVELS = 1 << KEEP_BITS
_LANES = 4  # 16-bit lanes per int64 word


def keep_threshold(p: float) -> int:
    """Elements whose 15 random bits are below this are kept (at least one level)."""
    return max(1, round((1.0 - p) * _LEVELS))


def keep_mask(shape: Sequence[int], p: float, *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dropout's multiplier: 32768 / t where kept, 0 where dropped (`x * mask` is dropout)."""
    threshold = keep_threshold(p)
    if threshold >= _LEVELS:  # p < 1/65536: every element is kept
        return torch.ones(*shape, device=device, dtype=dtype)
    n = math.prod(shape)
    words = torch.empty(-(-n // _LANES), dtype=torch.int64, device=device)
    lanes = words.random_(generator=generator).view(torch.int16)[:n]
    # (t - u) clamped to [0, 1] is 1 exactly when u < t: cheaper on CPU than a comparison
    kept = (threshold - (lanes & (_LEVELS - 1))).clamp_(0, 1)
    return kept.to(dtype).mul_(_LEVELS / threshold).view(*shape)


class Dropout(nn.Dropout):
    """`nn.Dropout` with `keep_mask` masks on CPU (global generator); torch's elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        return x * keep_mask(x.shape, self.p, dtype=x.dtype)


class Dropout2d(nn.Dropout2d):
    """`nn.Dropout2d` (whole channels) with `keep_mask` masks on CPU; torch's elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or x.dim() != 4:
            return super().forward(x)
        shape = (*x.shape[:2], 1, 1)
        return x * keep_mask(shape, self.p, dtype=x.dtype)
