"""A sampler seeded by the first trial this process gets: concurrent runs draw differently.

Two `tunetrack run` processes started together on one study used to build the same
sampler (same study seed, same count of finished trials) and drew the same parameters,
trial for trial. Workers get a per-process offset (`shared_study.sampler_seed_offset`),
but a plain `run` must stay reproducible: the same file on a fresh study draws the same
trials every time.

The storage already hands out something unique per process, reproducibly: the number of
the first trial it gives a process (trial numbers are assigned atomically; a queued trial
is popped by one process only). `FirstTrialSeeded` builds the real sampler at that first
trial with `offset = that number` and puts it in its place as the study's sampler (so
`study.sampler` is an ordinary Optuna sampler from then on). A single
process on a fresh study gets offset 0, on a resumed one the number of trials so far
(as before: a resumed study explores new points instead of replaying its first ones),
and two processes started together get different offsets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


class FirstTrialSeeded(BaseSampler):
    """Delegates to `make(offset)`, built at the first trial this process runs, which then
    replaces it as the sampler of the study given to `attach`."""

    def __init__(self, make: Callable[[int], BaseSampler]):
        self._make = make
        self._inner: BaseSampler | None = None
        self._study: optuna.Study | None = None

    def attach(self, study: optuna.Study) -> optuna.Study:
        """The study whose `sampler` this one hands over to the real sampler."""
        self._study = study
        return study

    @property
    def inner(self) -> BaseSampler:
        """The real sampler (built with offset 0 if asked before any trial)."""
        if self._inner is None:
            self._inner = self._make(0)
        return self._inner

    def __getattr__(self, name: str) -> Any:  # the real sampler's own methods and settings
        if name.startswith("__") or name in ("_make", "_inner", "_study"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._inner is None:
            self._inner = self._make(trial.number)
            if self._study is not None and self._study.sampler is self:
                self._study.sampler = self._inner  # later trials go to it directly
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: list[float] | None,
    ) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
