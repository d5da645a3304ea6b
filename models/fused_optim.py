"""One optimizer step for all members of a `FusedNet`, each with its own hyperparameters.

The members' parameters are rows of one [K, P] tensor (`FusedNet.flat`), so SGD (momentum,
Nesterov), Adam, AdamW and RMSprop are a handful of [K, P] operations whose learning rate,
weight decay, momentum/betas and L1 strength are [K, 1] columns. The update formulas are
torch.optim's (single-tensor reference implementation), term for term.

Where those columns come from: every member keeps a *shadow* torch optimizer on a dummy
parameter, built by `train.build_optimizer` from its own `TrainConfig`, driven by the very
scheduler `train.build_scheduler` gives the unfused trainer (StepLR, ExponentialLR,
CosineAnnealingLR, OneCycleLR with its momentum/beta1 cycling, ReduceLROnPlateau on the
member's own validation loss). The shadow never sees a gradient; its param group is the
member's hyperparameters at this step, so schedules need no re-implementation and match
torch's exactly, and a member's schedule only ever reads its own group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import TrainConfig
from .errors import TunetrackError
from .train import build_optimizer, build_scheduler

# per-member hyperparameter columns, in this order
_COLUMNS = ("lr", "weight_decay", "momentum", "beta1", "beta2", "eps", "alpha", "nesterov",
            "l1")
_STATE = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq"),
          "adamw": ("exp_avg", "exp_avg_sq"), "rmsprop": ("square_avg", "momentum_buffer")}


class MemberSchedule:
    """One member's learning rate (and momentum/beta1) over time, from torch's schedulers.

    Steps where the unfused `Trainer` steps its scheduler: `after_batch` (OneCycleLR),
    `after_epoch(val_loss)` (ReduceLROnPlateau with the loss, the others without).
    """

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int):
        self.cfg = cfg
        self._dummy = nn.Parameter(torch.zeros(1))
        self.optimizer = build_optimizer([self._dummy], cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, steps_per_epoch)
        self.optimizer.step()  # no gradient, no change; schedulers expect a step before theirs
        sched = torch.optim.lr_scheduler
        self.per_batch = isinstance(self.scheduler, sched.OneCycleLR)
        self.plateau = isinstance(self.scheduler, sched.ReduceLROnPlateau)

    @property
    def group(self) -> dict:
        return self.optimizer.param_groups[0]

    @property
    def lr(self) -> float:
        return float(self.group["lr"])

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

    def row(self) -> list[float]:
        g = self.group
        betas = g.get("betas", (0.0, 0.0))
        return [g["lr"], g["weight_decay"], g.get("momentum", 0.0), betas[0], betas[1],
                g.get("eps", 0.0), g.get("alpha", 0.0), float(bool(g.get("nesterov", False))),
                self.cfg.l1]


class FusedOptimizer:
    """`step()` updates `flat` from `grad` ([K, P] each) for every member at once."""

    def __init__(self, flat: torch.Tensor, grad: torch.Tensor, l1_mask: torch.Tensor,
                 optimizer: str, schedules: Sequence[MemberSchedule]):
        if optimizer not in _STATE:
            raise TunetrackError(f"train.optimizer must be one of {', '.join(_STATE)} to fuse "
                                 f"trials but got {optimizer!r}")
        self.kind = optimizer
        self.schedules = list(schedules)
        self.bind(flat, grad, l1_mask)
        self.state = {name: torch.zeros_like(flat) for name in _STATE[optimizer]}
        self.steps = torch.zeros(flat.shape[0], 1, dtype=torch.float64, device=flat.device)
        self.refresh()

    def bind(self, flat: torch.Tensor, grad: torch.Tensor, l1_mask: torch.Tensor) -> None:
        """Point at (new) parameter and gradient storage, e.g. after the group shrank."""
        self.flat, self.grad, self.l1_mask = flat, grad, l1_mask

    def refresh(self) -> None:
        """Read every member's hyperparameters from its shadow optimizer (one host copy)."""
        rows = torch.tensor([s.row() for s in self.schedules], dtype=torch.float64)
        rows = rows.to(self.flat.device, non_blocking=True)  # [K, columns]
        self.h64 = dict(zip(_COLUMNS, rows.split(1, dim=1), strict=True))
        self.h = dict(zip(_COLUMNS, rows.to(self.flat.dtype).split(1, dim=1), strict=True))
        wants_l1 = any(s.cfg.l1 for s in self.schedules)
        self.l1 = self.h["l1"] * self.l1_mask if wants_l1 else None

    def after_batch(self) -> None:
        if any([s.after_batch() for s in self.schedules]):
            self.refresh()

    def after_epoch(self, val_losses: Sequence[float]) -> None:
        for schedule, loss in zip(self.schedules, val_losses, strict=True):
            schedule.after_epoch(loss)
        self.refresh()

    def replace(self, k: int, schedule: MemberSchedule) -> None:
        """A new member in slot k: fresh state, its own schedule."""
        for buffer in self.state.values():
            buffer[k].zero_()
        self.steps[k] = 0
        self.schedules[k] = schedule
        self.refresh()

    def keep(self, slots: Sequence[int]) -> None:
        """Shrink to `slots`; call `bind` with the net's new storage first."""
        index = torch.as_tensor(list(slots), dtype=torch.long, device=self.flat.device)
        self.state = {n: b.index_select(0, index) for n, b in self.state.items()}
        self.steps = self.steps.index_select(0, index)
        self.schedules = [self.schedules[i] for i in slots]
        self.refresh()

    @torch.no_grad()
    def step(self) -> None:
        p, g, h = self.flat, self.grad, self.h
        if self.l1 is not None:  # d(l1 * |w|)/dw, as autograd gives it through abs()
            g = g + torch.sign(p) * self.l1
        if self.kind == "sgd":
            self._sgd(p, g, h)
        elif self.kind == "rmsprop":
            self._rmsprop(p, g, h)
        else:
            self._adam(p, g, h)

    def _sgd(self, p: torch.Tensor, g: torch.Tensor, h: dict) -> None:
        g = g + p * h["weight_decay"]
        buf = self.state["momentum_buffer"]  # zeros: m * 0 + g is torch's first-step clone
        buf.mul_(h["momentum"]).add_(g)
        direction = torch.where(h["nesterov"] > 0, g + buf * h["momentum"], buf)
        p.sub_(direction * h["lr"])

    def _rmsprop(self, p: torch.Tensor, g: torch.Tensor, h: dict) -> None:
        g = g + p * h["weight_decay"]
        square = self.state["square_avg"]
        square.mul_(h["alpha"]).add_(g * g * (1 - h["alpha"]))
        avg = square.sqrt().add_(h["eps"])
        buf = self.state["momentum_buffer"]  # momentum 0: buf = g / avg, torch's plain step
        buf.mul_(h["momentum"]).add_(g / avg)
        p.sub_(buf * h["lr"])

    def _adam(self, p: torch.Tensor, g: torch.Tensor, h: dict) -> None:
        self.steps += 1
        if self.kind == "adamw":
            p.mul_(1 - h["lr"] * h["weight_decay"])
        else:
            g = g + p * h["weight_decay"]
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        exp_avg.lerp_(g, 1 - h["beta1"])
        exp_avg_sq.mul_(h["beta2"]).add_(g * g * (1 - h["beta2"]))
        h64 = self.h64  # bias corrections in double, as torch computes them on the host
        step_size = (h64["lr"] / (1 - h64["beta1"] ** self.steps)).to(p.dtype)
        correction2 = (1 - h64["beta2"] ** self.steps).sqrt().to(p.dtype)
        denom = (exp_avg_sq.sqrt() / correction2).add_(h["eps"])
        p.sub_(exp_avg / denom * step_size)
