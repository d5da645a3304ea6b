"""The networks' dropout (`models/dropout.py`) vs `torch.nn.Dropout`, forward + backward.

Shapes are hidden layers of the digits study (batch x width). Both layers run in this
process on one thread, warm, alternating over repeats; each row prints microseconds per
call of each and the ratio torch / tunetrack last (how many times cheaper ours is).
Run: python -m bench.dropout_masks
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch
from torch import nn

from tunetrack.models.dropout import Dropout

SHAPES = [(64, 64), (64, 258), (32, 475), (256, 512)]
CALLS = 300


def _per_call_us(layer: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        layer(x).sum().backward()
    return (time.perf_counter() - start) / CALLS * 1e6


def main() -> None:
    torch.set_num_threads(int(os.environ.get("TUNETRACK_BENCH_THREADS", "1")))
    for shape in SHAPES:
        x = torch.randn(*shape, requires_grad=True)
        sides = {"torch": nn.Dropout(0.3), "tunetrack": Dropout(0.3)}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for layer in sides.values():  # warm
            _per_call_us(layer, x)
        for i in range(5):
            for name in (sides if i % 2 == 0 else reversed(list(sides))):
                times[name].append(_per_call_us(sides[name], x))
        torch_us, ours_us = (statistics.median(times[n]) for n in ("torch", "tunetrack"))
        print(json.dumps({"bench": "dropout_masks", "shape": list(shape), "p": 0.3,
                          "threads": torch.get_num_threads(), "torch_us": round(torch_us, 1),
                          "tunetrack_us": round(ours_us, 1),
                          "ratio": round(torch_us / ours_us, 2)}), flush=True)


if __name__ == "__main__":
    main()
