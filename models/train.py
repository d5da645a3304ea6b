"""One trainer for every network and recipe, with a per-epoch callback hook.

The epoch loop never synchronises with the device: loss and correct counts accumulate as
tensors and are read once per epoch. Callers (Optuna pruning, MLflow logging) plug in via
`EpochCallback.on_epoch_end(result) -> stop?`; the trainer knows nothing about them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from . import lean_optim
from .augment import augment_batch, mix_batch
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

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if k != "epoch"}


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


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: torch.Tensor  # (N,) int64, on CPU
    probabilities: torch.Tensor  # (N, n_classes) float32, on CPU


def param_groups(model: nn.Module, lr: float) -> list[dict]:
    """Trainable parameters as optimizer groups; frozen ones (requires_grad=False) left out.

    A module may carry an `lr_factor` attribute (a transfer backbone does, from
    `model.backbone_lr_factor`): its parameters form a group at `lr * lr_factor`. The group
    at `lr` itself comes first, so `param_groups[0]["lr"]` stays the logged `train.lr`.
    """
    factor_of: dict[int, float] = {}
    for module in model.modules():  # outer first: an inner lr_factor overrides an outer one
        factor = getattr(module, "lr_factor", None)
        if factor is not None:
            factor_of.update({id(p): float(factor) for p in module.parameters()})
    groups: dict[float, list[nn.Parameter]] = {1.0: []}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault(factor_of.get(id(p), 1.0), []).append(p)
    return [{"params": ps, "lr": lr * f} for f, ps in groups.items() if ps]


Params = Iterable[nn.Parameter] | Iterable[dict]


def _sgd(params: Params, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    kind = lean_optim.SGD if fused else torch.optim.SGD
    return kind(params, lr=cfg.lr, momentum=cfg.momentum,
                nesterov=cfg.nesterov and cfg.momentum > 0,
                weight_decay=cfg.weight_decay, **({"fused": True} if fused else {}))


def _adam(params: Params, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    kind = lean_optim.Adam if fused else torch.optim.Adam
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                **({"fused": True} if fused else {}))


def _adamw(params: Params, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    kind = lean_optim.AdamW if fused else torch.optim.AdamW
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                **({"fused": True} if fused else {}))


def _rmsprop(params: Params, cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    # RMSprop has no fused kernel: foreach is its fast path
    kind = lean_optim.RMSprop if fused else torch.optim.RMSprop
    return kind(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                foreach=True if fused else None)


# `train.optimizer` -> builder(params, cfg, fused); keys == choices.OPTIMIZERS (tested)
OPTIMIZERS: dict[str, Callable[[Params, TrainConfig, bool], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
    "rmsprop": _rmsprop,
}


def build_optimizer(params: Params, cfg: TrainConfig, *,
                    fused: bool = True) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.optimizer`; `params` may be groups with their own `lr`.

    `fused` kernels (CUDA, and CPU since torch 2.4) update a parameter in one kernel
    instead of a dozen (timings: bench/README.md). RMSprop has none and uses foreach. These
    are `lean_optim`'s classes: torch's, stepped without torch.optim's per-step wrapping
    and without importing `torch._dynamo`. `fused=False` gives PyTorch's own classes with
    their defaults, as the textbook baseline in bench/ writes them.
    """
    if cfg.optimizer not in OPTIMIZERS:
        raise unknown("optimizer", cfg.optimizer, OPTIMIZERS)
    cfg.check()
    return OPTIMIZERS[cfg.optimizer](params, cfg, fused)


Scheduler = Any  # torch's LRScheduler or ReduceLROnPlateau (no common public base)
_sched = torch.optim.lr_scheduler


def _onecycle(opt: torch.optim.Optimizer, cfg: TrainConfig, steps: int) -> Scheduler:
    # one peak per group (a transfer backbone's is lower than the head's)
    peaks = [group["lr"] for group in opt.param_groups]
    return _sched.OneCycleLR(opt, max_lr=peaks, total_steps=cfg.max_epochs * steps,
                             pct_start=cfg.onecycle_pct_start)


# `train.scheduler` -> builder(optimizer, cfg, steps per epoch); keys == choices.SCHEDULERS
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, TrainConfig, int], Scheduler | None]] = {
    "none": lambda opt, cfg, steps: None,
    "step": lambda opt, cfg, steps: _sched.StepLR(opt, step_size=cfg.step_size,
                                                  gamma=cfg.step_gamma),
    "exponential": lambda opt, cfg, steps: _sched.ExponentialLR(opt, gamma=cfg.exp_gamma),
    "cosine": lambda opt, cfg, steps: _sched.CosineAnnealingLR(opt, T_max=cfg.max_epochs,
                                                               eta_min=cfg.cosine_eta_min),
    "onecycle": _onecycle,
    "plateau": lambda opt, cfg, steps: _sched.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience),
}


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> Scheduler | None:
    """The scheduler named by `cfg.scheduler`, or None; see `Trainer` for when each steps."""
    if cfg.scheduler not in SCHEDULERS:
        raise unknown("scheduler", cfg.scheduler, SCHEDULERS)
    return SCHEDULERS[cfg.scheduler](opt, cfg, steps_per_epoch)


# `train.early_stopping.monitor` -> is `value` better than `best` by more than `delta`?
MONITORS: dict[str, Callable[[float, float, float], bool]] = {
    "val_loss": lambda value, best, delta: value < best - delta,
    "val_accuracy": lambda value, best, delta: value > best + delta,
}


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices/kernels (biases and norm scales are not penalised)."""
    weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    return torch.stack([w.abs().sum() for w in weights]).sum()


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """CUDA: bf16 where supported, else fp16 (with a GradScaler). CPU: fp32: bf16 is
    faster there, but oneDNN keeps its kernels per convolution shape for the life of the
    process, and a study that searches widths meets hundreds of shapes (bench/README.md)."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Trainer:
    """Trains `model` on `splits.train`, validating on `splits.val` after every epoch.

    LR schedulers step where PyTorch documents: OneCycleLR after every batch,
    ReduceLROnPlateau after every epoch with the validation loss, the others after every
    epoch. After `fit`, the model holds the weights of the best epoch by
    `early_stopping.monitor` (restored from memory), whether or not patience ran out.
    Patience restarts when an epoch begins at half the previous epoch's LR or less
    (`LR_DROP_RESTARTS_PATIENCE`).
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, splits: Splits, *,
                 callbacks: Sequence[EpochCallback] = (), device: torch.device | None = None):
        if cfg.early_stopping.monitor not in MONITORS:
            raise unknown("early_stopping.monitor", cfg.early_stopping.monitor, MONITORS)
        cfg.check()
        self.cfg = cfg
        self.device = device or resolve_device(cfg.device)
        self.callbacks = list(callbacks)
        # channels_last suits convolutions on CUDA and on CPU too (oneDNN; bench/README.md)
        self.channels_last = _has_conv(model) and splits.train.x.dim() == 4
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=fmt)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.train_data = self._batches(splits.train)
        self.val_data = self._batches(splits.val)
        # CPU: big eval batches are slower (activations outgrow the caches, and past the
        # allocator's mmap threshold page-fault afresh each batch; bench/README.md)
        self.eval_batch_size = (cfg.eval_batch_size if self.device.type != "cpu"
                                else min(cfg.eval_batch_size, CPU_EVAL_BATCH))
        self.amp_dtype = _autocast_dtype(self.device, cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.steps_per_epoch = count_train_batches(len(splits.train), cfg.batch_size)
        self.optimizer = build_optimizer(param_groups(self.model, cfg.lr), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.aug_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)

    def _batches(self, split: Split) -> ResidentBatches | StreamingBatches:
        stream = self.cfg.stream
        if stream is None:
            stream = split.x.numel() * 4 > 1024**3  # > 1 GiB stays on the host
        if stream:
            workers = 2 if self.device.type == "cuda" else 0
            return StreamingBatches(split, self.device, workers, self.channels_last)
        return ResidentBatches(split, self.device, self.channels_last)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype,
                              enabled=self.amp_dtype is not None)

    def _train_epoch(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        cfg, model = self.cfg, self.model
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        onecycle = isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR)
        for x, y in self.train_data.iterate(cfg.batch_size, self.gen):
            # training split only: evaluation (`_predict`) neither augments nor mixes
            x = augment_batch(x, cfg.augment, self.aug_gen)
            mix = mix_batch(x, y, cfg.augment, self.aug_gen)
            with self._autocast():
                logits = self.forward(x if mix is None else mix.x)
                if mix is None:
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                else:
                    loss = mix.loss(logits, cfg.label_smoothing)
            total = loss + cfg.l1 * l1_penalty(model) if cfg.l1 else loss
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(total).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                total.backward()
                self.optimizer.step()
            if onecycle and self.scheduler.last_epoch + 1 < self.scheduler.total_steps:
                self.scheduler.step()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.argmax(1) == (y if mix is None else mix.dominant_labels())).sum()
            seen += len(y)
        return loss_sum, correct, seen

    @torch.inference_mode()
    def _predict(self, data: ResidentBatches | StreamingBatches, *, autocast: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed loss, logits and labels over `data` in eval mode."""
        self.model.eval()
        logits, labels = [], []
        for x, y in data.iterate(self.eval_batch_size):
            with torch.autocast(self.device.type, dtype=self.amp_dtype,
                                enabled=autocast and self.amp_dtype is not None):
                logits.append(self.forward(x).float())
            labels.append(y)
        out, y = torch.cat(logits), torch.cat(labels)
        return F.cross_entropy(out, y, reduction="sum"), out, y

    def evaluate(self, split: Split) -> Evaluation:
        """Loss, accuracy, predictions and probabilities of the current model on `split`.

        In full precision, without autocast: these are the numbers that are reported and
        that a saved (fp32) copy of the model reproduces exactly; per-epoch validation
        keeps autocast for speed."""
        loss_sum, logits, y = self._predict(self._batches(split), autocast=False)
        pred = logits.argmax(1)
        n = max(len(y), 1)
        return Evaluation(loss=float(loss_sum) / n, accuracy=int((pred == y).sum()) / n,
                          predictions=pred.cpu(), probabilities=logits.softmax(1).cpu())

    def _improved(self, value: float, best: float | None) -> bool:
        stopping = self.cfg.early_stopping
        return best is None or MONITORS[stopping.monitor](value, best, stopping.min_delta)

    def fit(self) -> FitResult:
        """Train until `max_epochs`, early stopping or a callback says stop; the best
        epoch's weights are restored."""
        with flushed_denormals(self.device):
            return self._fit()

    def _fit(self) -> FitResult:
        cfg = self.cfg
        result = FitResult()
        best_value: float | None = None
        best_state: dict[str, torch.Tensor] | None = None
        since_best = 0
        # dropout draws from torch's global generator: seed it so a trial can be replayed
        # from its config alone (one trial per process thread, as Optuna runs them here)
        torch.manual_seed(cfg.seed)
        for epoch in range(cfg.max_epochs):
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            if epoch and lr <= result.history[-1].lr * LR_DROP_RESTARTS_PATIENCE:
                since_best = 0  # a scheduled LR drop starts a new phase: give it patience
            loss_sum, correct, seen = self._train_epoch()
            val_loss_sum, val_logits, val_y = self._predict(self.val_data)
            val_correct = (val_logits.argmax(1) == val_y).sum()
            # the one host sync of the epoch
            stats = torch.stack([loss_sum, correct.float(), val_loss_sum.float(),
                                 val_correct.float()]).tolist()
            seen_val = max(len(val_y), 1)
            res = EpochResult(
                epoch=epoch, train_loss=stats[0] / max(seen, 1),
                train_accuracy=stats[1] / max(seen, 1), val_loss=stats[2] / seen_val,
                val_accuracy=stats[3] / seen_val, lr=lr,
                epoch_seconds=time.perf_counter() - start,
            )
            result.history.append(res)
            if not all(math.isfinite(v) for v in (res.train_loss, res.val_loss)):
                result.stop_reason = "non_finite"
                result.message = (f"non-finite loss at epoch {epoch} (train_loss="
                                  f"{res.train_loss}, val_loss={res.val_loss}); lr={lr:g} "
                                  f"is probably too high")
                break
            monitored = getattr(res, cfg.early_stopping.monitor)
            if self._improved(monitored, best_value):
                best_value, since_best, result.best_epoch = monitored, 0, epoch
                best_state = copy.deepcopy(self.model.state_dict())
            else:
                since_best += 1
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(res.val_loss)
            elif self.scheduler is not None and not isinstance(
                    self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
                self.scheduler.step()
            stop = False
            for callback in self.callbacks:
                stop = bool(callback.on_epoch_end(res)) or stop
            if stop:
                result.stop_reason = "callback"
                break
            patience = cfg.early_stopping.patience
            if patience is not None and since_best >= patience:
                result.stop_reason = "early_stopping"
                result.message = (f"no {cfg.early_stopping.monitor} improvement > "
                                  f"{cfg.early_stopping.min_delta:g} for {patience} epochs")
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return result
