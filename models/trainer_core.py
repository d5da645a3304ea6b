"""What every training run does around its batches, written once for `Trainer` (one net)
and `FusedTrainer` (K members as one net).

Two parts:
- `TrainerCore`: the set-up both trainers share: the device, the splits as batches
  (resident or streamed), the evaluation batch size, autocast, the data stream's
  generators, and `fit()` with denormals flushed.
- `EpochBook`: one trial's course through its epochs: the monitor and its improvement rule,
  patience (restarting after a scheduled LR drop), the non-finite stop, the best epoch's
  weights, the callbacks and the epoch budget. `Trainer` keeps one, `FusedTrainer` one per
  member, so a member stops exactly when the same trial alone would.

Nothing here knows Optuna or MLflow: callers plug in through `EpochCallback`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .augment import Mix, augment_batch, mix_batch
from .batches import ResidentBatches, StreamingBatches, count_train_batches
from .config import TrainConfig
from .data import Split, Splits
from .device import flushed_denormals, resolve_device
from .errors import unknown

CPU_EVAL_BATCH = 128
# an epoch starting at <= this fraction of the previous epoch's LR restarts early-stopping
# patience: the drop (StepLR, ReduceLROnPlateau) is what usually breaks a plateau, and
# stopping just after it throws that away (measured: bench/README.md, "in the code")
LR_DROP_RESTARTS_PATIENCE = 0.5
# `train.early_stopping.monitor` -> is `value` better than `best` by more than `delta`?
MONITORS: dict[str, Callable[[float, float, float], bool]] = {
    "val_loss": lambda value, best, delta: value < best - delta,
    "val_accuracy": lambda value, best, delta: value > best + delta,
}
StateDict = dict[str, torch.Tensor]


@dataclass
class EpochResult:
    epoch: int  # 0-based
    # mean cross-entropy over the epoch, without the L1 term; on mixup/cutmix batches
    # lam * CE(y_a) + (1 - lam) * CE(y_b), the loss actually optimised
    train_loss: float
    train_accuracy: float  # mixup/cutmix batches: against the label with the larger weight
    val_loss: float
    val_accuracy: float
    lr: float  # learning rate in effect at the start of the epoch
    epoch_seconds: float  # training + validation wall time
    # the study's other metrics on the validation split (macro_f1, the user's own, ...)
    scores: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_sums(cls, epoch: int, sums: Sequence[float], seen: int, seen_val: int,
                  lr: float, seconds: float) -> EpochResult:
        """From the epoch's sums (train loss, train correct, val loss, val correct)."""
        loss, correct, val_loss, val_correct = sums
        seen, seen_val = max(seen, 1), max(seen_val, 1)
        return cls(epoch=epoch, train_loss=loss / seen, train_accuracy=correct / seen,
                   val_loss=val_loss / seen_val, val_accuracy=val_correct / seen_val, lr=lr,
                   epoch_seconds=seconds)

    def metrics(self) -> dict[str, float]:
        """Every number of the epoch by name, the scores among them."""
        own = {k: v for k, v in self.__dict__.items() if k not in ("epoch", "scores")}
        return own | self.scores

    def value(self, metric: str) -> float:
        """The epoch's value of `metric`: a field (val_loss, ...) or a score (macro_f1)."""
        return self.scores[metric] if metric in self.scores else getattr(self, metric)


class EpochCallback(Protocol):
    def on_epoch_end(self, result: EpochResult) -> bool:
        """Return True to stop training after this epoch."""


@dataclass
class FitResult:
    history: list[EpochResult] = field(default_factory=list)
    best_epoch: int | None = None  # epoch whose weights the model holds after `fit`
    stop_reason: str = "max_epochs"  # max_epochs | early_stopping | callback | non_finite
    message: str = ""

    @property
    def best(self) -> EpochResult | None:
        return None if self.best_epoch is None else self.history[self.best_epoch]

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def check_train_config(cfg: TrainConfig) -> None:
    """What both trainers refuse before building anything: an unknown monitor, bad numbers."""
    if cfg.early_stopping.monitor not in MONITORS:
        raise unknown("early_stopping.monitor", cfg.early_stopping.monitor, MONITORS)
    cfg.check()


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """CUDA: bf16 where supported, else fp16 (with a GradScaler). CPU: fp32: bf16 is
    faster there, but oneDNN keeps its kernels per convolution shape for the life of the
    process, and a study that searches widths meets hundreds of shapes (bench/README.md)."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class EpochBook:
    """One trial's epochs: call `begin_epoch(lr)`, then `observe` the epoch's result, then
    (unless `done`) `decide`. After `done`, `fit` says why it stopped and `best_state`
    holds the best epoch's weights (by `early_stopping.monitor`), whether or not patience
    ran out."""

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[EpochCallback] = ()):
        self.cfg, self.callbacks = cfg, list(callbacks)
        self.fit = FitResult()
        self.best_value: float | None = None
        self.best_state: StateDict | None = None
        self.since_best = 0
        self.lr = cfg.lr
        self.done = False

    def begin_epoch(self, lr: float) -> None:
        self.lr = lr
        history = self.fit.history
        if history and lr <= history[-1].lr * LR_DROP_RESTARTS_PATIENCE:
            self.since_best = 0  # a scheduled LR drop starts a new phase: give it patience

    def observe(self, res: EpochResult, state: Callable[[], StateDict]) -> None:
        """Record the epoch; a non-finite loss ends the trial, an improvement keeps
        `state()` (called only then: copying weights is not free)."""
        self.fit.history.append(res)
        if not all(math.isfinite(v) for v in (res.train_loss, res.val_loss)):
            self.fit.stop_reason, self.done = "non_finite", True
            self.fit.message = (f"non-finite loss at epoch {res.epoch} (train_loss="
                                f"{res.train_loss}, val_loss={res.val_loss}); lr={res.lr:g} "
                                f"is probably too high")
            return
        stopping = self.cfg.early_stopping
        monitored = getattr(res, stopping.monitor)
        if self.best_value is None or MONITORS[stopping.monitor](
                monitored, self.best_value, stopping.min_delta):
            self.best_value, self.since_best, self.fit.best_epoch = monitored, 0, res.epoch
            self.best_state = state()
        else:
            self.since_best += 1

    def decide(self, res: EpochResult) -> None:
        """Every callback, then patience, then the epoch budget."""
        stop = False
        for callback in self.callbacks:
            stop = bool(callback.on_epoch_end(res)) or stop
        stopping = self.cfg.early_stopping
        if stop:
            self.fit.stop_reason, self.done = "callback", True
        elif stopping.patience is not None and self.since_best >= stopping.patience:
            self.fit.stop_reason, self.done = "early_stopping", True
            self.fit.message = (f"no {stopping.monitor} improvement > "
                                f"{stopping.min_delta:g} for {stopping.patience} epochs")
        elif len(self.fit.history) >= self.cfg.max_epochs:
            self.done = True  # stop_reason stays "max_epochs"


class TrainerCore:
    """The set-up `Trainer` and `FusedTrainer` share; `cfg` is the one trial's or the
    group's shared `TrainConfig` (its data-stream fields are the group's)."""

    def __init__(self, cfg: TrainConfig, splits: Splits, device: torch.device,
                 channels_last: bool):
        self.cfg, self.device, self.channels_last = cfg, device, channels_last
        self.train_data = self.batches(splits.train)
        self.val_data = self.batches(splits.val)
        # CPU: big eval batches are slower (activations outgrow the caches, and past the
        # allocator's mmap threshold page-fault afresh each batch; bench/README.md)
        self.eval_batch_size = (cfg.eval_batch_size if device.type != "cpu"
                                else min(cfg.eval_batch_size, CPU_EVAL_BATCH))
        self.amp_dtype = autocast_dtype(device, cfg.amp)
        self.steps_per_epoch = count_train_batches(len(splits.train), cfg.batch_size)
        # the data stream: batch order and augmentation draws, from the trial's seed
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)

    @staticmethod
    def device_for(cfg: TrainConfig, device: torch.device | None) -> torch.device:
        return device or resolve_device(cfg.device)

    def batches(self, split: Split) -> ResidentBatches | StreamingBatches:
        stream = self.cfg.stream
        if stream is None:
            stream = split.x.numel() * 4 > 1024**3  # > 1 GiB stays on the host
        if stream:
            workers = 2 if self.device.type == "cuda" else 0
            return StreamingBatches(split, self.device, workers, self.channels_last)
        return ResidentBatches(split, self.device, self.channels_last)

    def train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, Mix | None]]:
        """One epoch's training batches in the data stream's order, augmented, and mixed
        where mixup/cutmix draw (training split only: evaluation neither augments nor
        mixes)."""
        augment = self.cfg.augment
        for x, y in self.train_data.iterate(self.cfg.batch_size, self.gen):
            x = augment_batch(x, augment, self.aug_gen)
            yield x, y, mix_batch(x, y, augment, self.aug_gen)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast where it is on; otherwise no context at all (a disabled `autocast`
        still cost ~17 us per step to enter and leave: 2 % of a digits MLP group's step)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def fit(self):
        """Train (`_fit`) with denormals flushed on CPU (`device.flushed_denormals`)."""
        with flushed_denormals(self.device):
            return self._fit()

    def _fit(self):
        raise NotImplementedError
