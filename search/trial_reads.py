"""Reads that cost what they show: a study's trial counts, its latest trials and its
RUNNING ones, without building every trial of a 10,000-trial study.

Optuna's `study.get_trials()` builds every trial with its params, attributes and
intermediate values (17 s at 10k trials of 20 reports, bench/read_scaling.py), and its
per-process cache makes even a filtered read load the whole study first. On an RDB storage
these go to the database under the cache: a count per state is one query, the last N
trials 2N small ones. Journal and in-memory storages hold the study in memory anyway.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna

from .optuna_internals import (
    study_id,
    study_storage,
    trial_id,
    trial_rows,
    trial_state_counts,
    uncached_storage,
)

STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def state_counts(study: optuna.Study) -> dict[str, int]:
    """{state: trials}, in `STATE_ORDER`, states with no trial left out."""
    counts = trial_state_counts(study_storage(study), study_id(study))
    return _in_order(counts if counts is not None else
                     Counter(t.state.name for t in study.get_trials(deepcopy=False)))


def _in_order(counts: Mapping[str, int]) -> dict[str, int]:
    return {state: counts[state] for state in STATE_ORDER if counts.get(state)}


def recent_trials(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    """The study's last `n` trials by number (every trial when n is None or larger)."""
    backend = _rdb(study)
    if backend is None:
        return study.get_trials(deepcopy=False)[-n:]
    sid = study_id(study)
    total = sum(state_counts(study).values())
    return [backend.get_trial(backend.get_trial_id_from_study_id_trial_number(sid, number))
            for number in range(max(0, total - n), total)]


def running_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The RUNNING trials, read by state in the database (not after loading the study)."""
    backend = _rdb(study)
    running = (optuna.trial.TrialState.RUNNING,)
    if backend is None:
        return study.get_trials(deepcopy=False, states=running)
    return backend.get_all_trials(study_id(study), deepcopy=False, states=running)


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The RDB storage under Optuna's cache, or None for journal and in-memory storages."""
    backend = uncached_storage(study_storage(study))
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


@dataclass(frozen=True)
class TrialSummary:
    """What ranking and cost-to-target read of a trial, under `FrozenTrial`'s names (the
    readers take either): no params, no system attributes, only the last report."""

    number: int
    state: optuna.trial.TrialState
    values: list[float] | None
    datetime_start: datetime | None
    datetime_complete: datetime | None
    intermediate_values: dict[int, float]  # the last report only
    user_attrs: dict[str, Any]
    storage_id: int = field(repr=False)

    @property
    def duration(self):
        if self.datetime_start is None or self.datetime_complete is None:
            return None
        return self.datetime_complete - self.datetime_start


def trial_summaries(study: optuna.Study, attr_keys: Sequence[str]
                    ) -> list[TrialSummary]:
    """Every trial as a `TrialSummary` with the user attributes `attr_keys` (four queries
    on an RDB storage; journal and in-memory storages: from their trials)."""
    rows = trial_rows(study_storage(study), study_id(study), tuple(attr_keys))
    if rows is None:
        return [TrialSummary(t.number, t.state, t.values, t.datetime_start,
                             t.datetime_complete, _last(t.intermediate_values),
                             {k: t.user_attrs[k] for k in attr_keys if k in t.user_attrs},
                             trial_id(t))
                for t in study.get_trials(deepcopy=False)]
    return [TrialSummary(r["number"], r["state"],
                         [r["values"][i] for i in sorted(r["values"])] or None,
                         r["datetime_start"], r["datetime_complete"],
                         dict([r["last_report"]]) if r["last_report"] else {},
                         r["user_attrs"], r["trial_id"])
            for r in rows]


def _last(curve: dict[int, float]) -> dict[int, float]:
    return {max(curve): curve[max(curve)]} if curve else {}


def whole(study: optuna.Study, summaries: Sequence[TrialSummary]
          ) -> list[optuna.trial.FrozenTrial]:
    """The full trials of `summaries` (one read each)."""
    storage = study_storage(study)
    return [storage.get_trial(s.storage_id) for s in summaries]


def bounded_view(study: optuna.Study, limit: int,
                 rank: Callable[[Any], tuple]) -> tuple[optuna.Study, str | None]:
    """`study` itself when it has at most `limit` trials; else an in-memory study of the
    `limit // 2` best (by `rank`) and of the rest spread evenly over the study's course
    (its history's shape kept), read whole, and a note saying so: what the report's plots
    draw, in a time that does not grow with the study."""
    summaries = trial_summaries(study, ())
    if len(summaries) <= limit:
        return study, None
    best = sorted(summaries, key=rank)[:limit // 2]
    chosen = {s.number for s in best}
    rest = [s for s in summaries if s.number not in chosen]
    step = len(rest) / (limit - len(best))
    chosen |= {rest[int(i * step)].number for i in range(limit - len(best))}
    picked = [s for s in summaries if s.number in chosen]
    view = StudyView(study, whole(study, picked))
    counts = ", ".join(f"{n} {state}" for state, n in
                       _in_order(Counter(s.state.name for s in summaries)).items())
    return view, (f"the report draws {len(picked)} of the study's {len(summaries)} trials "
                  f"({counts}): the {len(best)} best and {len(picked) - len(best)} spread "
                  f"over its course")


class StudyView(optuna.Study):
    """Some of a study's trials, read whole, as a study that readers (Optuna's plots, the
    report) take like the study itself, trial numbers included (`add_trials` would number
    them afresh); its best trial is the study's."""

    def __init__(self, study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial]):
        storage = optuna.storages.InMemoryStorage()
        storage.create_new_study(study.directions, study.study_name)
        super().__init__(study_name=study.study_name, storage=storage)
        self.whole_study, self.shown = study, list(trials)

    def get_trials(self, deepcopy: bool = True, states: Any = None
                   ) -> list[optuna.trial.FrozenTrial]:
        shown = [t for t in self.shown if states is None or t.state in states]
        return copy.deepcopy(shown) if deepcopy else shown

    @property
    def best_trial(self) -> optuna.trial.FrozenTrial:
        return self.whole_study.best_trial
