"""A fused group's pruning questions, asked with one read of the study per group epoch.

`Trial.should_prune` hands the pruner the live study, and on an RDB storage (SQLite,
PostgreSQL) every `study.get_trials` reads each unfinished trial again from the database:
its parameters, every reported value, its attributes. An unfused study has one unfinished
trial; a fused group has K, and each of them asks every epoch, so a group epoch cost K
reads of K trials. On the digits study (`fuse: 8`, SQLite, no tracking, 2026-12-01, Intel
VM) those reads were half of the trials' wall time: 10.7 s against 5.6 s on an in-memory
storage (bench/README.md).

A round reports every member's value first and then reads the study once; each member's
pruner question is answered from that read. It answers exactly as K live questions would:
no trial of the study finishes inside a group epoch (`FusedTrainer` hands finished members
out after every member has decided), and a pruner of `SNAPSHOT_PRUNERS` reads only the
finished trials and the asking trial's own reports, and writes nothing. ASHA and Hyperband
write a rung attribute as they decide, which the next member's question reads: their
members keep asking the live study.
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
