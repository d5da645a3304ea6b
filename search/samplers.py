"""Optuna sampler and pruner from the study file's `search` section, built by name.

Name registries (`SAMPLERS`, `PRUNERS`), as `models.nets` does for networks: a name that is
not a key is an error listing the allowed ones, never a silent default. The keys are
`config.SAMPLER_NAMES` / `PRUNER_NAMES`, which the torch- and Optuna-free validator uses.

The seed is `seed + offset`; the runner passes the number of the process's first trial
(`first_trial_seed`), so a resumed study explores new points instead of replaying its first
random trials, and two processes on one study draw different ones.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from tunetrack.models.config import SEEDS, TrainConfig
from tunetrack.models.errors import unknown

from .config import PrunerSpec, SearchSpec, StudySpec
from .optuna_warnings import quiet_experimental
from .space import SearchSpace

_s = optuna.samplers
_p = optuna.pruners

# `search.sampler` -> builder(search section, space, seed)
SAMPLERS: dict[str, Callable[[SearchSpec, SearchSpace, int], _s.BaseSampler]] = {
    "tpe": lambda search, space, seed: _s.TPESampler(
        seed=seed, multivariate=True, group=True, constant_liar=True,
        n_startup_trials=search.n_startup_trials),
    "random": lambda search, space, seed: _s.RandomSampler(seed=seed),
    "grid": lambda search, space, seed: _s.GridSampler(space.grid(), seed=seed),
    "cmaes": lambda search, space, seed: _s.CmaEsSampler(
        seed=seed, warn_independent_sampling=False),
    "gp": lambda search, space, seed: _s.GPSampler(
        seed=seed, n_startup_trials=search.n_startup_trials),
    "qmc": lambda search, space, seed: _s.QMCSampler(seed=seed, warn_independent_sampling=False),
    "nsga2": lambda search, space, seed: _s.NSGAIISampler(seed=seed),
}


def _median(spec: PrunerSpec) -> _p.MedianPruner:
    return _p.MedianPruner(n_startup_trials=spec.n_startup_trials,
                           n_warmup_steps=spec.n_warmup_steps)


# `search.pruner.type` -> builder(pruner section, max epochs)
PRUNERS: dict[str, Callable[[PrunerSpec, int], _p.BasePruner]] = {
    "hyperband": lambda spec, max_epochs: _p.HyperbandPruner(
        min_resource=spec.min_resource, max_resource=max_epochs,
        reduction_factor=spec.reduction_factor),
    "asha": lambda spec, max_epochs: _p.SuccessiveHalvingPruner(
        min_resource=spec.min_resource, reduction_factor=spec.reduction_factor),
    "median": lambda spec, max_epochs: _median(spec),
    "percentile": lambda spec, max_epochs: _p.PercentilePruner(
        spec.percentile, n_startup_trials=spec.n_startup_trials,
        n_warmup_steps=spec.n_warmup_steps),
    "patient": lambda spec, max_epochs: _p.PatientPruner(_median(spec), patience=spec.patience),
    "none": lambda spec, max_epochs: _p.NopPruner(),
}


def make_sampler(spec: StudySpec, space: SearchSpace, *, offset: int = 0) -> _s.BaseSampler:
    """The sampler named by `search.sampler`, seeded with `seed + offset` (modulo 2**32, the
    seeds numpy takes: a seed near the top plus a worker's offset is still a seed)."""
    name = spec.search.sampler
    if name not in SAMPLERS:
        raise unknown("search.sampler", name, SAMPLERS)
    with quiet_experimental():  # TPE's group, QMC
        return SAMPLERS[name](spec.search, space, (spec.seed + offset) % SEEDS)


def most_epochs(space: SearchSpace) -> int:
    """The most epochs any trial of the study trains (Hyperband's max resource): the fixed
    `train.max_epochs`, the top of its searched range or choices, or the trainer default."""
    values = [value for _, value in space.edges("train.max_epochs")]
    return max(values) if values else TrainConfig.max_epochs


def make_pruner(spec: PrunerSpec, max_epochs: int) -> _p.BasePruner:
    """The pruner named by `search.pruner.type`; hyperband's max resource is `max_epochs`."""
    if spec.type not in PRUNERS:
        raise unknown("search.pruner.type", spec.type, PRUNERS)
    with quiet_experimental():  # PatientPruner
        return PRUNERS[spec.type](spec, max_epochs)
