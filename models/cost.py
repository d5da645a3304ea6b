"""What one trial cost: wall, device, CPU seconds, peak memory and, on CUDA, energy.

Pure torch and the standard library (NVML through `pynvml` when importable), so the trainer
side can measure without knowing who records the numbers. A measurement that cannot be
made on this machine is left out (None), never reported as 0: an energy of 0 J would read
as "free", not as "unknown".

- wall: the whole trial, set-up and tracking hand-off included.
- device: the time spent training and evaluating (`on_device` blocks), synchronised with
  the GPU at both ends so queued kernels are counted where they ran.
- CPU: this process's user + system time over the trial (`time.process_time`, all threads).
- peak host memory: Linux lets a process reset its peak RSS (`/proc/self/clear_refs`,
  "5"), so the peak is this trial's own; elsewhere it is the process's peak so far
  (`ru_maxrss`), which only ever grows (documented as such).
- peak device memory: `torch.cuda.max_memory_allocated` since the trial started.
- energy: NVML's total energy counter (mJ since the driver loaded; Volta and newer)
  read before and after.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

_MB = 1024 * 1024
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class TrialCost:
    wall_seconds: float
    device_seconds: float
    cpu_seconds: float
    peak_memory_mb: float
    peak_device_memory_mb: float | None = None  # CUDA only
    energy_joules: float | None = None  # CUDA with an NVML energy counter only

    def metrics(self) -> dict[str, float]:
        """`cost_<name>` -> value, leaving out what could not be measured."""
        return {f"cost_{k}": float(v) for k, v in asdict(self).items() if v is not None}


def _reset_peak_rss() -> bool:
    """Start a new peak-RSS window for this process (Linux >= 4.0); False elsewhere."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset_worked: bool) -> float:
    if reset_worked:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in _STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / _MB  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MB if sys.platform == "darwin" else peak * 1024 / _MB  # bytes vs kB


def _nvml_energy_mj(device: torch.device) -> float | None:
    """NVML's total energy counter of `device` in mJ, or None when not measurable."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        with contextlib.suppress(Exception):  # CUDA_VISIBLE_DEVICES remaps the numbering
            index = torch.cuda._get_nvml_device_index(index)
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except Exception:  # pynvml.NVMLError: no driver, an old GPU, no permission
        return None


class CostMeter:
    """Measures one trial: `start()`, wrap training/evaluation in `on_device()`, `stop()`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.device_seconds = 0.0
        self._cuda = device.type == "cuda"
        self._result: TrialCost | None = None

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)

    def start(self) -> CostMeter:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        self._rss_window = _reset_peak_rss()
        self._energy = None
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self._energy = _nvml_energy_mj(self.device)
        return self

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        """Count the time inside as device time (training or evaluation)."""
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.device_seconds += time.perf_counter() - start

    def stop(self) -> TrialCost:
        """The trial's cost; a second call returns the first result."""
        if self._result is not None:
            return self._result
        self._sync()
        peak_device = energy = None
        if self._cuda:
            peak_device = torch.cuda.max_memory_allocated(self.device) / _MB
            end = _nvml_energy_mj(self.device)
            if self._energy is not None and end is not None:
                energy = (end - self._energy) / 1000.0
        self._result = TrialCost(
            wall_seconds=time.perf_counter() - self._wall, device_seconds=self.device_seconds,
            cpu_seconds=time.process_time() - self._cpu,
            peak_memory_mb=_peak_rss_mb(self._rss_window),
            peak_device_memory_mb=peak_device, energy_joules=energy)
        return self._result
