"""Run a study's trials K at a time as fused groups (`search.fuse: K`), through Optuna
itself so every sampler keeps working (docs/fused_trials.md, "How a group forms").

`study.optimize` asks the group's *leader*, whose shared values (`fused_groups`) become
the group's; each further member is `enqueue_trial(shared values)` + `ask()`, an ordinary
trial whose recipe the sampler draws. Members train as one `FusedTrainer`; each is
finished exactly as an unfused trial is (`Objective.conclude` / `close`), told to Optuna
at once, and its slot refilled while the budget and `GROUP_SPAN` allow. During a
model-based sampler's random start-up trials train unfused. On CUDA an out-of-memory
error halves K for the rest of the process and trains the group's unfinished members
again in halves (`_train`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from tunetrack.models import EpochResult, Trainer
from tunetrack.models.cost import CostMeter
from tunetrack.models.fused_train import FusedTrainer, Member, MemberResult, unfused_reason
from tunetrack.models.user_code import UserCodeError

from .fused_groups import GROUP_ATTR, GROUP_TAG, effective_fuse, fuse_notes, shared_values
from .objective import Objective, PruningCallback, user_failure
from .optuna_internals import heartbeat_thread
from .pruning_round import SNAPSHOT_PRUNERS, PruningRound
from .trial_budget import FINISHED, SharedTrialBudget

_log = logging.getLogger(__name__)
# a group admits at most this many times K trials (K at the start, the rest as refills of
# finished slots): refills keep the device busy, the cap makes the sampler choose a new
# architecture (the shared part) at least every GROUP_SPAN * K trials
GROUP_SPAN = 4
# samplers whose first `search.n_startup_trials` finished trials are random draws
MODEL_BASED = ("tpe", "gp")
TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@dataclass
class _Trial:
    """One member as the search side sees it: Optuna trial, MLflow run, pruning callback,
    and how it ended."""

    trial: optuna.Trial
    run: Any
    pruning: PruningCallback | None
    leader: bool  # told by `optimize` when the group ends; the others by us as they finish
    meter: CostMeter
    heartbeat: Any = None
    closed: bool = False
    state: str = "FAIL"  # COMPLETE | PRUNED | FAIL
    values: list[float] | None = None
    reason: str = ""


class MemberTrials:
    """Each member of a group is an ordinary Optuna trial: started with its own MLflow run
    and pruning callback, finished exactly as `Objective` finishes a trial, and told to
    Optuna as soon as it ends, with the study's callbacks (the leader is told by
    `optimize` when its group ends)."""

    def __init__(self, objective: Objective):
        self.objective = objective
        self.splits, self.device = objective.splits, objective.device
        self.callbacks: list[TrialCallback] = []

    def start(self, trial: optuna.Trial, sampled: dict, cfg: Any, group: str, *,
              leader: bool, pruning_round: PruningRound | None) -> Member:
        """The member's `_Trial` (as `Member.key`): its run tagged with its group, its
        pruning callback (answered by `pruning_round` where there is one)."""
        trial.set_user_attr(GROUP_ATTR, group)
        run = self.objective.start_run(trial, sampled, cfg, tags={GROUP_TAG: group})
        pruning = self.objective.pruning_callback(trial, pruning_round)
        entry = _Trial(trial, run, pruning, leader, CostMeter(self.device).start())
        if not leader:  # the leader's heartbeat is optimize's; a member's is ours
            entry.heartbeat = _heartbeat(trial)
        callbacks = [c for c in (run, pruning) if c is not None]
        return Member(cfg.model, cfg.train, callbacks, key=entry)

    def alone(self, trial: optuna.Trial) -> None:
        """Train `trial` unfused, now, and tell Optuna (a trial that cannot join)."""
        state, values = "FAIL", None
        try:
            values = _as_list(self.objective(trial))  # its owner is noted already (`_ask`)
            state = "COMPLETE"
        except optuna.TrialPruned:
            state = "PRUNED"
        except Exception as exc:  # recorded as the trial's reason by the objective
            _log.warning("trial %s failed: %s", trial.number, exc)
        self.tell(trial.study, trial, state, values)

    def finish(self, result: MemberResult) -> None:
        """What `Objective` does after `fit` (`Objective.conclude`), for one member."""
        entry: _Trial = result.member.key
        member = result.member
        # its device time: its share of each group epoch (`EpochResult.epoch_seconds`)
        entry.meter.device_seconds += sum(r.epoch_seconds for r in result.fit.history)
        evaluator = Trainer(result.model, member.train, self.splits, device=self.device,
                            scores=self.objective.scores)
        try:  # an error here fails this member and the group's others (`_train`)
            value = self.objective.conclude(entry.trial, result.fit, evaluator, entry.pruning,
                                            entry.run, entry.meter)
            entry.state, entry.values = "COMPLETE", _as_list(value)
        except optuna.TrialPruned as exc:
            entry.state, entry.reason = "PRUNED", str(exc)
        self._end(entry)

    def fail(self, members: Sequence[Member], reason: str) -> None:
        """FAIL every member not closed yet, with `reason`."""
        for member in members:
            entry: _Trial = member.key
            if entry.closed:
                continue
            entry.state, entry.reason = "FAIL", reason
            self._end(entry)

    def _end(self, entry: _Trial) -> None:
        """The trial closed as `Objective` closes one, then Optuna told (the leader is
        told by `optimize`) and the study's callbacks run."""
        self.objective.close(entry.trial, entry.run, entry.meter, entry.state, entry.reason)
        entry.closed = True
        if entry.heartbeat is not None:
            entry.heartbeat.__exit__(None, None, None)
        if not entry.leader:
            self.tell(entry.trial.study, entry.trial, entry.state, entry.values)

    def tell(self, study: optuna.Study, trial: optuna.Trial, state: str,
             values: list[float] | None) -> None:
        frozen = study.tell(trial, values if state == "COMPLETE" else None,
                            state=optuna.trial.TrialState[state])
        for callback in self.callbacks:
            # a SharedTrialBudget may wait for the running trials, and the group's leader
            # runs until the group ends: it runs once, for the leader, when `optimize` has
            # told it (it counts the whole study, so once per group is enough)
            if not isinstance(callback, SharedTrialBudget):
                callback(study, frozen)


class FusedStudy:
    """`study.optimize` driver for fused groups: one `optimize` step = one group."""

    def __init__(self, objective: Objective, k: int, *,
                 run_trial: Callable[[optuna.Trial], Any] | None = None,
                 mark_owner: Callable[[optuna.Trial], Any] | None = None):
        self.objective = objective
        # an unfused trial through the runner's wrapper; `mark_owner(trial)` notes which
        # process runs a trial (runner._owned), for the members the wrapper never sees
        self.run_trial = run_trial or objective
        self.mark_owner = mark_owner or (lambda trial: None)
        self.space, self.splits, self.device = objective.space, objective.splits, objective.device
        self.k = k
        self.remaining = 0
        self.deadline: float | None = None
        self.members = MemberTrials(objective)
        self.admitted = 0  # trials the current group has taken
        # where the study's pruner can answer a group epoch from one read (pruning_round)
        self.pruning_round: PruningRound | None = None

    # ---- the optimize loop --------------------------------------------------------------

    def optimize(self, study: optuna.Study, *, n_trials: int, timeout: float | None,
                 catch: tuple[type[Exception], ...], callbacks: Sequence[TrialCallback]) -> None:
        self.remaining = n_trials
        self.deadline = time.monotonic() + timeout if timeout else None
        self.members.callbacks = list(callbacks)
        if self.objective.spec.search.pruner.type in SNAPSHOT_PRUNERS:
            self.pruning_round = PruningRound(study)

        def budget(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
            if self.remaining <= 0:
                study.stop()

        study.optimize(self, n_trials=None, timeout=timeout, catch=catch,
                       callbacks=[*callbacks, budget])

    def _starting(self, study: optuna.Study) -> bool:
        """Is the sampler still in its random start-up? Those trials train unfused: a group
        would fix one random architecture for K of them, while unfused they show the
        sampler K architectures to learn from (digits study: best 0.9667 fused from the
        first trial vs 0.9889 with an unfused start-up, see docs/fused_trials.md)."""
        search = self.objective.spec.search
        if search.sampler not in MODEL_BASED:
            return False
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return len(study.get_trials(deepcopy=False, states=states)) < search.n_startup_trials

    def _fuses(self, leader: optuna.Trial, cfg: Any) -> bool:
        """Can a group of the leader's architecture train as one, faster than its members
        one by one (`unfused_reason`: a family that fuses, a user network vmap can run, on
        CPU small members only)? If not, the leader trains alone and the next trial may
        lead a group of another architecture."""
        reason = unfused_reason(cfg.model, self.splits, cfg.train.batch_size, self.device)
        if reason is not None:
            _log.info("trial %d trains unfused: %s", leader.number, reason)
        return reason is None

    def _more(self, study: optuna.Study) -> bool:
        """May this process start another trial? (its budget, the study's budget shared by
        workers, the timeout, `study.stop()`)"""
        if self.remaining <= 0 or getattr(study, "_stop_flag", False):
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        totals = [c.total for c in self.members.callbacks
                  if isinstance(c, SharedTrialBudget)]
        if totals:  # a worker: the trials other workers finished or run count too
            states = (*FINISHED, optuna.trial.TrialState.RUNNING,
                      optuna.trial.TrialState.WAITING)
            return len(study.get_trials(deepcopy=False, states=states)) < min(totals)
        return True

    def __call__(self, leader: optuna.Trial) -> float | tuple[float, ...]:
        """One group, led by `leader` (whose outcome `optimize` records on return)."""
        self.remaining -= 1
        study = leader.study
        sampled = self.space.sample(leader)
        cfg = self.space.resolve(sampled, device=str(self.device))
        if self.k == 1 or self._starting(study) or not self._fuses(leader, cfg):
            return self.run_trial(leader)  # re-sampling returns the values already drawn
        self.mark_owner(leader)
        group = f"g{leader.number}"
        shared = shared_values(sampled)
        first = self.members.start(leader, sampled, cfg, group, leader=True,
                                   pruning_round=self.pruning_round)
        members = [first]
        self.admitted = 1
        while len(members) < self.k and self._more(study):
            member = self._ask(study, shared, group)
            if member is not None:
                members.append(member)
        self._train(study, members, shared, group)
        outcome: _Trial = first.key
        if outcome.state == "COMPLETE":
            values = outcome.values or []
            return values[0] if len(values) == 1 else tuple(values)
        if outcome.state == "PRUNED":
            raise optuna.TrialPruned(outcome.reason)
        raise torch.cuda.OutOfMemoryError(outcome.reason)  # the one failure not raised yet

    # ---- members ------------------------------------------------------------------------

    def _ask(self, study: optuna.Study, shared: dict, group: str) -> Member | None:
        """A new member: enqueue the group's shared values, ask, let the sampler fill in."""
        study.enqueue_trial(shared, user_attrs={GROUP_ATTR: group}, skip_if_exists=False)
        trial = study.ask()
        self.mark_owner(trial)
        self.remaining -= 1
        self.admitted += 1
        sampled = self.space.sample(trial)
        cfg = self.space.resolve(sampled, device=str(self.device))
        if trial.user_attrs.get(GROUP_ATTR) != group or shared_values(sampled) != shared:
            # another worker's queued trial (or ours was taken): train it alone, now
            self.members.alone(trial)
            return None
        return self.members.start(trial, sampled, cfg, group, leader=False,
                                  pruning_round=self.pruning_round)

    def _report(self, rows: list[tuple[Member, EpochResult]]) -> None:
        """`FusedTrainer.on_epoch`: the group epoch's reports, then the round's one read."""
        if self.pruning_round is None:
            return
        reports = [(p.trial, p.value(res), res.epoch) for p, res in
                   ((member.key.pruning, res) for member, res in rows) if p is not None]
        if reports:
            self.pruning_round.report(reports)

    def _refill(self, study: optuna.Study, shared: dict, group: str) -> Member | None:
        while self._more(study) and self.admitted < GROUP_SPAN * self.k:
            member = self._ask(study, shared, group)
            if member is not None:
                return member
        return None

    def _train(self, study: optuna.Study, members: list[Member], shared: dict,
               group: str) -> None:
        """Train the group; on CUDA out of memory halve K and train the rest in halves."""
        trainer = None
        try:
            trainer = FusedTrainer(members, self.splits, device=self.device,
                                   refill=lambda: self._refill(study, shared, group),
                                   on_done=self.members.finish,
                                   on_epoch=self._report, scores=self.objective.scores)
            trainer.fit()
        except torch.cuda.OutOfMemoryError:
            pending = [s.member for s in trainer.slots] if trainer is not None else members
            if len(pending) <= 1:  # as an unfused trial: FAIL, and the study goes on
                self.members.fail(pending, "CUDA out of memory (one trial alone)")
                return
            self.k = max(1, len(pending) // 2)
            _log.warning("CUDA out of memory training %d fused trials at once; K is now %d "
                         "for the rest of this run, and the group's %d unfinished trials "
                         "train again in groups of %d", len(pending), self.k, len(pending),
                         self.k)
            del trainer
            torch.cuda.empty_cache()
            for start in range(0, len(pending), self.k):
                self._train(study, pending[start:start + self.k], shared, group)
        except BaseException as exc:
            pending = [s.member for s in trainer.slots] if trainer is not None else members
            user = user_failure(exc, members[0].model) if isinstance(exc, Exception) else None
            reason = user if user is not None else f"{type(exc).__name__}: {exc}"
            self.members.fail(pending, reason)
            if user is not None and not isinstance(exc, UserCodeError):
                raise UserCodeError(reason) from exc  # its trials fail, the study goes on
            raise



def _as_list(value: float | tuple[float, ...]) -> list[float]:
    return list(value) if isinstance(value, tuple) else [value]


def _heartbeat(trial: optuna.Trial) -> Any:
    """Optuna's heartbeat thread for a trial `optimize` did not ask (RDB storages)."""
    thread = heartbeat_thread(trial)
    thread.__enter__()
    return thread


def optimize_fused(study: optuna.Study, objective: Objective,
                   run_trial: Callable[[optuna.Trial], Any], *, n_trials: int,
                   timeout: float | None, catch: tuple[type[Exception], ...],
                   callbacks: Sequence[TrialCallback],
                   mark_owner: Callable[[optuna.Trial], Any] | None = None) -> None:
    """`study.optimize` with `search.fuse` groups (runner.run_study calls this when K > 1).

    `run_trial`: how the runner runs one trial unfused (`objective` wrapped); `mark_owner`:
    what that wrapper notes on a trial before running it, for the members it never sees."""
    spec = objective.spec
    families = objective.space.options("model.family")
    for note in fuse_notes(spec, families):
        _log.warning("note: %s", note)
    k = effective_fuse(spec)
    if k == 1:
        study.optimize(run_trial, n_trials=n_trials, timeout=timeout, catch=catch,
                       callbacks=callbacks)
        return
    fused = FusedStudy(objective, k, run_trial=run_trial, mark_owner=mark_owner)
    fused.optimize(study, n_trials=n_trials, timeout=timeout, catch=catch, callbacks=callbacks)
