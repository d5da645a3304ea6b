"""Pick the training device: CUDA > MPS > CPU, unless the caller names one."""

from __future__ import annotations

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
