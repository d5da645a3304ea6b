"""What a trial ran on, recorded as run tags so `tunetrack reproduce` can tell whether a
bit-exact replay is to be expected, and name what differs when it is not.

Bit-exactness on CPU depends on more than the seed: the torch build (kernels), numpy and
scikit-learn (data loading and splitting), the CPU (vectorised kernels pick different
paths per instruction set) and the number of torch threads (reduction order). Tags, not
params: they describe the machine, not the trial's choices.
"""

from __future__ import annotations

import functools
import platform
from importlib import metadata

VERSION_PREFIX = "tunetrack.version."
CPU = "tunetrack.cpu"
GPU = "tunetrack.gpu"
THREADS = "tunetrack.torch_threads"
PACKAGES = ("torch", "numpy", "scikit-learn", "scipy", "torchvision", "pillow", "tunetrack")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def _machine_tags() -> dict[str, str]:
    import torch

    tags = {f"{VERSION_PREFIX}python": platform.python_version(), CPU: _cpu_model()}
    for package in PACKAGES:
        try:
            tags[f"{VERSION_PREFIX}{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    if torch.cuda.is_available():
        tags[GPU] = torch.cuda.get_device_name()
        tags[f"{VERSION_PREFIX}cudnn"] = str(torch.backends.cudnn.version())
    return tags


def environment_tags() -> dict[str, str]:
    """Package versions, CPU/GPU model and the current torch thread count (not cached:
    the study sets it before the first trial)."""
    import torch

    return {**_machine_tags(), THREADS: str(torch.get_num_threads())}


def environment_differences(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    """'name: recorded -> now' for every environment tag that differs (missing ones too)."""
    keys = sorted(k for k in {*recorded, *now}
                  if k.startswith(VERSION_PREFIX) or k in (CPU, GPU, THREADS))
    out = []
    for key in keys:
        before, after = recorded.get(key, "not recorded"), now.get(key, "none")
        if before != after:
            out.append(f"{key.removeprefix(VERSION_PREFIX).removeprefix('tunetrack.')}: "
                       f"{before} -> {after}")
    return out
