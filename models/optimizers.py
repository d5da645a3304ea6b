"""The training recipe's torch objects: parameter groups, optimizers, LR schedulers and
the L1 penalty, built by name from a `TrainConfig`.

`Trainer` builds one of each for its net; `fused_optim` builds one per fused member as a
*shadow* whose param group carries that member's hyperparameters at each step, so the
schedules of fused members are torch's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from . import lean_optim
from .config import TrainConfig
from .errors import unknown


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


def _sgd(params: Params, cfg: TrainConfig, textbook: bool) -> torch.optim.Optimizer:
    kind = torch.optim.SGD if textbook else lean_optim.SGD
    return kind(params, lr=cfg.lr, momentum=cfg.momentum,
                nesterov=cfg.nesterov and cfg.momentum > 0,
                weight_decay=cfg.weight_decay, **({} if textbook else {"fused": True}))


def _adam(params: Params, cfg: TrainConfig, textbook: bool) -> torch.optim.Optimizer:
    kind = torch.optim.Adam if textbook else lean_optim.Adam
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                **({} if textbook else {"fused": True}))


def _adamw(params: Params, cfg: TrainConfig, textbook: bool) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if textbook else lean_optim.AdamW
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                **({} if textbook else {"fused": True}))


def _rmsprop(params: Params, cfg: TrainConfig, textbook: bool) -> torch.optim.Optimizer:
    # RMSprop has no fused kernel: foreach is its fast path
    kind = torch.optim.RMSprop if textbook else lean_optim.RMSprop
    return kind(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                foreach=None if textbook else True)


# `train.optimizer` -> builder(params, cfg, textbook); keys == choices.OPTIMIZERS (tested)
OPTIMIZER_BUILDERS: dict[str, Callable[[Params, TrainConfig, bool], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
    "rmsprop": _rmsprop,
}


def build_optimizer(params: Params, cfg: TrainConfig, *,
                    textbook: bool = False) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.optimizer`; `params` may be groups with their own `lr`.

    By default torch's fused kernels (CUDA, and CPU since torch 2.4), which update a
    parameter in one kernel instead of a dozen (timings: bench/README.md); RMSprop has none
    and uses foreach. These are `lean_optim`'s classes: torch's, stepped without
    torch.optim's per-step wrapping and without importing `torch._dynamo`.
    `textbook=True` gives PyTorch's own classes with their defaults, as the textbook
    baseline in bench/ writes them.
    """
    if cfg.optimizer not in OPTIMIZER_BUILDERS:
        raise unknown("optimizer", cfg.optimizer, OPTIMIZER_BUILDERS)
    cfg.check()
    return OPTIMIZER_BUILDERS[cfg.optimizer](params, cfg, textbook)


Scheduler = Any  # torch's LRScheduler or ReduceLROnPlateau (no common public base)
_sched = torch.optim.lr_scheduler


def _onecycle(opt: torch.optim.Optimizer, cfg: TrainConfig, steps: int) -> Scheduler:
    # one peak per group (a transfer backbone's is lower than the head's)
    peaks = [group["lr"] for group in opt.param_groups]
    return _sched.OneCycleLR(opt, max_lr=peaks, total_steps=cfg.max_epochs * steps,
                             pct_start=cfg.onecycle_pct_start)


# `train.scheduler` -> builder(optimizer, cfg, steps per epoch); keys == choices.SCHEDULERS
SchedulerBuilder = Callable[[torch.optim.Optimizer, TrainConfig, int], Scheduler | None]
SCHEDULER_BUILDERS: dict[str, SchedulerBuilder] = {
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
    if cfg.scheduler not in SCHEDULER_BUILDERS:
        raise unknown("scheduler", cfg.scheduler, SCHEDULER_BUILDERS)
    return SCHEDULER_BUILDERS[cfg.scheduler](opt, cfg, steps_per_epoch)


class Stepper:
    """When a scheduler steps, as PyTorch documents it and both trainers do: OneCycleLR after
    every batch (never past its last step), ReduceLROnPlateau after every epoch with the
    validation loss, the others after every epoch; None steps nothing."""

    def __init__(self, scheduler: Scheduler | None):
        self.scheduler = scheduler
        self.per_batch = isinstance(scheduler, _sched.OneCycleLR)
        self.plateau = isinstance(scheduler, _sched.ReduceLROnPlateau)

    def after_batch(self) -> bool:
        """Step a per-batch schedule; True when the hyperparameters changed."""
        if self.per_batch and self.scheduler.last_epoch + 1 < self.scheduler.total_steps:
            self.scheduler.step()
            return True
        return False

    def after_epoch(self, val_loss: float) -> None:
        if self.plateau:
            self.scheduler.step(val_loss)
        elif self.scheduler is not None and not self.per_batch:
            self.scheduler.step()


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices/kernels (biases and norm scales are not penalised)."""
    weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    return torch.stack([w.abs().sum() for w in weights]).sum()
