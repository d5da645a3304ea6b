"""Pick the training device: CUDA > MPS > CPU, unless the caller names one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .config import DEVICE_PATTERN
from .errors import TunetrackError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not DEVICE_PATTERN.fullmatch(name):  # the rule `TrainConfig.problems` applies
        raise TunetrackError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TunetrackError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TunetrackError(f"device {name!r} asked for, but MPS is not available here")
    return device


@contextlib.contextmanager
def flushed_denormals(device: torch.device) -> Iterator[None]:
    """On CPU, treat denormal floats (|x| < 1.2e-38) as zero while the block runs.

    A converging net's tiny gradients and Adam moments turn denormal, and x86 cores take
    ~100 cycles per denormal operation: a 3x512 digits MLP's epoch slowed from 0.052 to
    0.085 s between epochs 10 and 90 without this, and stayed at 0.050 s with it, at the
    same best epoch and accuracy (bench/README.md, "in the code"). The setting is the
    calling thread's (torch has no getter): it is switched off again afterwards.
    """
    flushed = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)
