"""Optuna sampler and pruner from the study file's `search` section.

On resume the sampler is re-seeded with `seed + finished trials` so that a restarted study
explores new points instead of replaying its first random trials.
"""

from __future__ import annotations

import warnings

import optuna

from .config import PrunerSpec, StudySpec
from .space import SearchSpace


def make_sampler(*args, **kwargs) -> optuna.samplers.BaseSampler:
    """`_make_sampler` without Optuna's experimental-feature warnings (group, QMC)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _make_sampler(*args, **kwargs)


def _make_sampler(
    spec: StudySpec, space: SearchSpace, *, offset: int = 0
) -> optuna.samplers.BaseSampler:
    search, seed = spec.search, spec.seed + offset
    samplers = optuna.samplers
    if search.sampler == "tpe":
        return samplers.TPESampler(
            seed=seed,
            multivariate=True,
            group=True,
            constant_liar=True,
            n_startup_trials=search.n_startup_trials,
        )
    if search.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    if search.sampler == "grid":
        return samplers.GridSampler(space.grid(), seed=seed)
    if search.sampler == "cmaes":
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if search.sampler == "gp":
        return samplers.GPSampler(seed=seed, n_startup_trials=search.n_startup_trials)
    if search.sampler == "qmc":
        return samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return samplers.NSGAIISampler(seed=seed)


def make_pruner(spec: PrunerSpec, max_epochs: int) -> optuna.pruners.BasePruner:
    pruners = optuna.pruners
    median = {"n_startup_trials": spec.n_startup_trials, "n_warmup_steps": spec.n_warmup_steps}
    if spec.type == "hyperband":
        return pruners.HyperbandPruner(
            min_resource=spec.min_resource,
            max_resource=max_epochs,
            reduction_factor=spec.reduction_factor,
        )
    if spec.type == "asha":
        return pruners.SuccessiveHalvingPruner(
            min_resource=spec.min_resource, reduction_factor=spec.reduction_factor
        )
    if spec.type == "median":
        return pruners.MedianPruner(**median)
    if spec.type == "percentile":
        return pruners.PercentilePruner(spec.percentile, **median)
    if spec.type == "patient":
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return pruners.PatientPruner(pruners.MedianPruner(**median), patience=spec.patience)
    return pruners.NopPruner()
