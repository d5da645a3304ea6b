"""Train a group of K trials (members) as one `FusedNet`, each with its own life cycle.

Per member, everything the unfused `Trainer` does happens as it would alone: each member
keeps its own `trainer_core.EpochBook` (callbacks, early stopping, non-finite stop, best
weights) and its own LR schedule and hyperparameters (`fused_optim`). When a member is
done the caller gets it as an ordinary `Classifier` (`MemberResult.model`) and may hand in
the next member for the freed slot (`refill`); without one, the group shrinks.

What the members share (`fused_fields`): the architecture and the data stream. All
members see the same batches in the same order and the same augmentation draws, from
generators seeded with the *group's* seed (the first member's `train.seed`), exactly as an
unfused trial with that seed would see them. A member's own seed sets its initial weights
and its dropout masks. A member that joins a running group (a refilled slot) starts at its
own epoch 0 on the group's stream where it is then.

This module knows nothing of Optuna: the search side passes callbacks and a refill function.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .config import ModelConfig, TrainConfig
from .data import Splits
from .errors import TunetrackError
from .fused_fields import (
    FUSABLE_FAMILIES,
    SHARED_MODEL_FIELDS,
    SHARED_TRAIN_FIELDS,
    cpu_fuse_max_macs,
    differences,
)
from .fused_functional import FunctionalStack, functional_problem, stack_user_networks
from .fused_net import FusedNet, fusing_pays
from .fused_optim import FusedOptimizer, MemberSchedule
from .metrics import ScoreFn, score
from .nets import Classifier, create, model_path
from .train import _has_conv
from .trainer_core import (
    EpochBook,
    EpochCallback,
    EpochResult,
    FitResult,
    TrainerCore,
    check_train_config,
)

# a batch's labels with their weights in the loss: ((y, 1.0),), or mixup's two
Targets = Sequence[tuple[torch.Tensor, "torch.Tensor | float"]]


@dataclass
class Member:
    """One trial of a group: its configs, its epoch callbacks and the caller's handle."""

    model: ModelConfig
    train: TrainConfig
    callbacks: Sequence[EpochCallback] = ()
    key: Any = None  # whatever the caller needs to recognise it (search: the Optuna trial)


@dataclass
class MemberResult:
    member: Member
    fit: FitResult
    model: Classifier  # the member's best-epoch weights, an ordinary network


def group_differences(members: Sequence[Member]) -> list[str]:
    """Fields the members must share but do not (`model.width`, `train.batch_size`, ...)."""
    return (differences("model", SHARED_MODEL_FIELDS, [m.model for m in members])
            + differences("train", SHARED_TRAIN_FIELDS, [m.train for m in members]))


def unfused_reason(cfg: ModelConfig, splits: Splits, batch_size: int, device: torch.device
                   ) -> str | None:
    """Why trials of this architecture should train unfused (one line), or None: a family
    that cannot fuse, a user network `vmap` cannot run (`functional_problem`), or members
    too big to gain on a CPU (`fusing_pays`)."""
    user = model_path(cfg) is not None
    if not user and cfg.family not in FUSABLE_FAMILIES:
        return f"model.family {cfg.family} does not fuse"
    if user:
        network = create(cfg, splits.input_shape, splits.n_classes, splits.mean, splits.std,
                         seed=0)
        problem = functional_problem(network, splits.train.x[:2], splits.n_classes)
        if problem is not None:
            return problem
    if not fusing_pays(cfg, splits.input_shape, splits.n_classes, batch_size, device):
        return (f"its members would take more than {cpu_fuse_max_macs(user) / 1e6:.0f} M "
                f"multiply-adds per step on CPU, where fusing gains little")
    return None


def stack_members(members: Sequence[Member], splits: Splits, device: torch.device
                  ) -> FusedNet | FunctionalStack:
    """The members as one network: tunetrack's MLP/CNN layer by layer (`FusedNet`), the
    user's own network through torch.func (`FunctionalStack`)."""
    configs, seeds = [m.model for m in members], [m.train.seed for m in members]
    if model_path(configs[0]) is None:
        return FusedNet.create(configs, seeds, splits.input_shape, splits.n_classes,
                               splits.mean, splits.std, device)
    networks = [create(cfg, splits.input_shape, splits.n_classes, splits.mean, splits.std,
                       seed=seed) for cfg, seed in zip(configs, seeds, strict=True)]
    return stack_user_networks(networks, splits.train.x[:2], splits.n_classes, device)


def member_loss_grad(logits: torch.Tensor, targets: Targets, smoothing: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`mixed_losses` and their gradient with respect to the logits ([K, N, C]), for the
    tape (`FusedNet.train_step`): (softmax - (1 - e) * sum_t w_t * onehot(y_t) - e / C) / N.
    """
    logp = _log_probs(logits)
    k, c, n = logp.shape
    losses = _mixed(logp, targets, smoothing)
    grad = logp.exp()  # the softmax, [K, C, N]
    for y, weight in targets:
        taken = _taken(weight, smoothing, (k, 1, n), grad.device)
        grad.scatter_add_(1, y.view(1, 1, n).expand(k, 1, n), taken)
    if smoothing is not None:
        grad.sub_((smoothing / c).view(k, 1, 1))
    return losses, grad.div_(n).transpose(1, 2)


def _taken(weight: torch.Tensor | float, smoothing: torch.Tensor | None,
           shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """-(1 - e) * w per member and sample ([K, 1, N]): what a target takes off the
    softmax. Without smoothing a single `full` (building it from a [K] tensor of ones
    made the loss and its gradient 34 rather than 29 us for 8 x 64 digits logits)."""
    if smoothing is not None:
        return ((smoothing - 1) * weight).view(-1, 1, 1).expand(shape)
    if isinstance(weight, torch.Tensor):
        return (-weight).expand(shape)
    return torch.full(shape, -weight, device=device)


def mixed_losses(logits: torch.Tensor, targets: Targets,
                 smoothing: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy per member ([K]) of logits [K, N, C] against (labels, weight) pairs
    (one pair with weight 1, or mixup's lam * CE(y_a) + (1 - lam) * CE(y_b)), with
    per-member label smoothing [K] written as `F.cross_entropy(label_smoothing=e)` computes
    it: (1 - e) * NLL + e / C * mean(-sum_c log p)."""
    return _mixed(_log_probs(logits), targets, smoothing)


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax over the classes as the middle dimension ([K, C, N], a view): torch's
    CPU kernel over a last dimension of 10 classes took 68 us for 8 x 64 digits logits,
    over the middle one 22 us, with the same values (bench/README.md)."""
    return logits.float().transpose(1, 2).log_softmax(1)


def _losses(logp: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor | None
            ) -> torch.Tensor:
    k, c, n = logp.shape
    nll = -logp.gather(1, y.view(1, 1, n).expand(k, 1, n)).squeeze(1).mean(1)
    if smoothing is None:
        return nll
    uniform = -logp.sum(1).mean(1)
    return (1 - smoothing) * nll + uniform * (smoothing / c)


def _mixed(logp: torch.Tensor, targets: Targets, smoothing: torch.Tensor | None
           ) -> torch.Tensor:
    if len(targets) == 1:
        return _losses(logp, targets[0][0], smoothing)
    return sum(weight * _losses(logp, y, smoothing) for y, weight in targets)


class _Slot(EpochBook):
    """One member's epochs (the `EpochBook` an unfused trial keeps) and its schedule."""

    def __init__(self, member: Member, schedule: MemberSchedule):
        super().__init__(member.train, member.callbacks)
        self.member, self.schedule = member, schedule


class FusedTrainer(TrainerCore):
    """Trains `members` (same architecture and data stream, see `SHARED_*`) as one net.

    `refill()` is asked for the next member each time one finishes (None: the group
    shrinks); `on_done(result)` gets each finished member at once, before its slot is
    refilled; `on_epoch(rows)` gets every training member's (member, result) of a group
    epoch before any member's callbacks run (the search side reports them to Optuna at once
    and reads the study once: `search/pruning_round.py`). `scores` (name -> fn(y_true,
    y_prob), as `Trainer` takes them) are measured for each member on the validation split
    every epoch (`EpochResult.scores`). `fit()` returns every member's result in finishing
    order.
    """

    def __init__(self, members: Sequence[Member], splits: Splits, *,
                 device: torch.device | None = None,
                 refill: Callable[[], Member | None] | None = None,
                 on_done: Callable[[MemberResult], None] | None = None,
                 on_epoch: Callable[[list[tuple[Member, EpochResult]]], None] | None = None,
                 scores: Mapping[str, ScoreFn] | None = None):
        if not members:
            raise TunetrackError("a fused group needs at least one member")
        differ = group_differences(members)
        if differ:
            raise TunetrackError(f"members of a fused group must share {', '.join(differ)}")
        for member in members:
            check_train_config(member.train)
        cfg = members[0].train  # its shared fields are the group's, its seed the stream's
        device = self.device_for(cfg, device)
        self.net = stack_members(members, splits, device)
        channels_last = _has_conv(self.net.templates[0]) and splits.train.x.dim() == 4
        super().__init__(cfg, splits, device, channels_last)
        self.splits = splits
        self.refill, self.on_done, self.on_epoch = refill, on_done, on_epoch
        self.scores = dict(scores or {})
        # bf16 autocast on CUDA; fp16 would need a GradScaler aware of per-member steps
        if self.amp_dtype != torch.bfloat16:
            self.amp_dtype = None
        self.taped = self.net.tapeable and self.amp_dtype is None
        self.slots = [_Slot(m, MemberSchedule(m.train, self.steps_per_epoch)) for m in members]
        self.optimizer = FusedOptimizer(self.net.flat, self.net.flat_grad, self.net.l1_mask,
                                        [s.schedule for s in self.slots])
        self._smoothing()

    def _smoothing(self) -> None:
        values = [s.cfg.label_smoothing for s in self.slots]
        self.smoothing = (torch.tensor(values, device=self.device) if any(values) else None)

    # ---- one epoch ----------------------------------------------------------------------

    def _train_epoch(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        net, k = self.net, self.net.k
        net.train()
        # each batch's numbers are kept and added up once at the end of the epoch: the
        # running sums were 6 small operations per step (~5 % of a digits MLP group's)
        losses_seen, predicted, targets = [], [], []
        for x, y, mix in self.train_batches():
            labels = (((y, 1.0),) if mix is None
                      else ((mix.y_a, mix.lam), (mix.y_b, 1 - mix.lam)))
            x = x if mix is None else mix.x
            if self.taped:  # gradients written to flat_grad, no autograd (fused_tape)
                losses, logits = net.train_step(x, functools.partial(
                    member_loss_grad, targets=labels, smoothing=self.smoothing))
            else:
                with self.autocast():
                    logits = net(x)
                losses = mixed_losses(logits, labels, self.smoothing)
                net.flat_grad.zero_()
                losses.sum().backward()  # member k's gradient is its own loss's gradient
            self.optimizer.step()
            self.optimizer.after_batch()
            losses_seen.append(losses.detach())
            predicted.append(logits.detach().argmax(-1))
            targets.append(y if mix is None else mix.dominant_labels())
        if not targets:
            zero = torch.zeros(k, device=self.device)
            return zero, zero.long(), 0
        sizes = torch.tensor([len(t) for t in targets], dtype=torch.float32,
                             device=self.device)
        loss_sum = (torch.stack(losses_seen, 1) * sizes).sum(1)
        correct = (torch.cat(predicted, 1) == torch.cat(targets)).sum(1)
        return loss_sum, correct, sum(map(len, targets))

    @torch.inference_mode()
    def _validate(self) -> tuple[torch.Tensor, torch.Tensor, int, list[dict[str, float]]]:
        """Each member's summed loss and correct count on the validation split, the number
        of images, and each member's scores (none without `scores`)."""
        net, k = self.net, self.net.k
        net.eval()
        loss_sum = torch.zeros(k, device=self.device)
        correct = torch.zeros(k, device=self.device, dtype=torch.long)
        seen = 0
        kept, labels = [], []  # for the scores: every batch's logits [K, n, C]
        for x, y in self.val_data.iterate(self.eval_batch_size):
            with self.autocast():
                logits = net(x).float()
            loss_sum += mixed_losses(logits, ((y, 1.0),), None) * len(y)
            correct += (logits.argmax(-1) == y).sum(1)
            seen += len(y)
            if self.scores:
                kept.append(logits)
                labels.append(y)
        if not kept:
            return loss_sum, correct, seen, [{} for _ in range(k)]
        prob, y = torch.cat(kept, 1).softmax(-1), torch.cat(labels)
        return loss_sum, correct, seen, [
            {name: score(name, fn, y, prob[i]) for name, fn in self.scores.items()}
            for i in range(k)]

    # ---- the group's life ---------------------------------------------------------------

    def _fit(self) -> list[MemberResult]:
        results: list[MemberResult] = []
        # randomness inside a user's network (`FunctionalStack`) draws from torch's global
        # generator: seeded with the group's seed, a group can be replayed
        torch.manual_seed(self.cfg.seed)
        while self.slots:
            start = time.perf_counter()
            for slot in self.slots:
                slot.begin_epoch(slot.schedule.lr)
            loss_sum, correct, seen = self._train_epoch()
            val_loss, val_correct, seen_val, scores = self._validate()
            # the one host sync of the epoch
            stats = torch.stack([loss_sum, correct.float(), val_loss, val_correct.float()])
            sums = list(zip(*stats.tolist(), strict=True))  # per member
            seconds = (time.perf_counter() - start) / len(self.slots)  # each member's share
            epoch_results = []
            for k, slot in enumerate(self.slots):
                res = EpochResult.from_sums(len(slot.fit.history), sums[k], seen, seen_val,
                                            slot.lr, seconds)
                res.scores = scores[k]
                slot.observe(res, lambda k=k: self.net.member_state(k))
                epoch_results.append(res)
            self.optimizer.after_epoch([r.val_loss for r in epoch_results])
            live = [(slot, res) for slot, res in zip(self.slots, epoch_results, strict=True)
                    if not slot.done]
            if self.on_epoch is not None and live:
                self.on_epoch([(slot.member, res) for slot, res in live])
            for slot, res in live:
                slot.decide(res)
            self._retire([k for k, slot in enumerate(self.slots) if slot.done], results)
        return results

    def _retire(self, finished: list[int], results: list[MemberResult]) -> None:
        """Hand finished members out, refill their slots or shrink the group."""
        if not finished:
            return
        dropped = []
        for k in finished:
            slot = self.slots[k]
            model = self.net.extract(k, slot.best_state, last=True)
            result = MemberResult(slot.member, slot.fit, model)
            results.append(result)
            if self.on_done is not None:
                self.on_done(result)
            member = self.refill() if self.refill is not None else None
            if member is None:
                dropped.append(k)
            else:
                self._place(k, member)
        if dropped:
            keep = [k for k in range(len(self.slots)) if k not in dropped]
            self.slots = [self.slots[k] for k in keep]
            if keep:
                self.net.keep(keep)
                self.optimizer.keep(keep, self.net.flat, self.net.flat_grad, self.net.l1_mask)
        self._smoothing()

    def _place(self, k: int, member: Member) -> None:
        check_train_config(member.train)
        differ = group_differences([self.slots[k].member, member])
        if differ:
            raise TunetrackError(f"a refill must share {', '.join(differ)} with its group")
        splits = self.splits
        model = create(member.model, splits.input_shape, splits.n_classes, splits.mean,
                       splits.std, seed=member.train.seed)
        self.net.replace_member(k, model, member.model, member.train.seed)
        schedule = MemberSchedule(member.train, self.steps_per_epoch)
        self.optimizer.replace(k, schedule)
        self.slots[k] = _Slot(member, schedule)
