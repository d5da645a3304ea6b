"""A fused group's pruning questions, asked with one read of the study per group epoch.

On an RDB storage every `study.get_trials` re-reads each unfinished trial, and a fused
group has K of them, each asking its pruner every epoch: K reads of K trials per group
epoch, half the wall time of a digits study with `fuse: 8` on SQLite (bench/README.md).
A round reports every member's value, reads the study once and answers each member from
that read, exactly as K live questions would: no trial finishes inside a group epoch, and
the pruners of `SNAPSHOT_PRUNERS` read only finished trials and the asker's reports and
write nothing. ASHA and Hyperband write a rung attribute as they decide: their members ask
the live study.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

# `search.pruner.type`s whose answers one read per round gives exactly (see above);
# "patient" wraps a median pruner
SNAPSHOT_PRUNERS = frozenset({"median", "percentile", "patient", "none"})


class StudyAsRead:
    """The study as one `get_trials` read it, for a pruner: `get_trials` answers from that
    read, everything else (direction, pruner, ...) from the study itself."""

    def __init__(self, study: optuna.Study):
        self._study = study
        self._trials = study.get_trials(deepcopy=False)
        self._by_number = {t.number: t for t in self._trials}

    def get_trials(self, deepcopy: bool = True,
                   states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def trial(self, number: int) -> FrozenTrial | None:
        return self._by_number.get(number)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class PruningRound:
    """One group epoch's pruning: `report` every member's value, then `should_prune` each
    (`PruningCallback.on_epoch_end` with this round)."""

    def __init__(self, study: optuna.Study):
        self.study = study
        self.read: StudyAsRead | None = None

    def report(self, reports: Sequence[tuple[optuna.Trial, float, int]]) -> None:
        """`trial.report(value, epoch)` for each member, then the round's one read."""
        for trial, value, epoch in reports:
            trial.report(value, epoch)
        self.read = StudyAsRead(self.study)

    def should_prune(self, trial: optuna.Trial, epoch: int) -> bool:
        frozen = None if self.read is None else self.read.trial(trial.number)
        # a member the round did not report (a member trained again after a CUDA
        # out-of-memory error reports its epochs again: Optuna keeps the first values)
        if frozen is None or epoch not in frozen.intermediate_values:
            raise RuntimeError(f"trial {trial.number}: pruning asked for epoch {epoch} before "
                               f"the group's round reported it")
        return bool(self.study.pruner.prune(self.read, frozen))
