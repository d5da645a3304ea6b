"""Samplers and pruners come from name registries: each name builds its own Optuna type
with the study file's settings and seed, and a name that is not a key is an error, never a
silently substituted default."""

from __future__ import annotations

import warnings

import optuna
import pytest

from tunetrack.models import TunetrackError
from tunetrack.search.config import PRUNER_NAMES, SAMPLER_NAMES
from tunetrack.search.samplers import PRUNERS, SAMPLERS, make_pruner, make_sampler
from tunetrack.search.space import SearchSpace
from tunetrack.search.study_file import parse_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
S, P = optuna.samplers, optuna.pruners


def _spec(sampler: str = "tpe", **search):
    model = {"depth": {"int": [1, 3]}, "activation": {"choice": ["relu", "tanh", "gelu", "elu"]}}
    if sampler != "grid":
        model["dropout"] = {"float": [0.0, 0.5]}
    return parse_study({"name": "s", "seed": 7, "model": model,
                        "search": {"sampler": sampler, "n_startup_trials": 4, **search}})


def test_registries_hold_exactly_the_names_the_validator_allows():
    assert tuple(SAMPLERS) == SAMPLER_NAMES
    assert tuple(PRUNERS) == PRUNER_NAMES


@pytest.mark.parametrize(("name", "kind", "settings"), [
    ("tpe", S.TPESampler, {"_multivariate": True, "_group": True, "_constant_liar": True,
                           "_n_startup_trials": 4}),
    ("random", S.RandomSampler, {}),
    ("grid", S.GridSampler, {"_search_space": {
        "model.depth": [1, 2, 3], "model.activation": ["relu", "tanh", "gelu", "elu"]}}),
    ("cmaes", S.CmaEsSampler, {"_warn_independent_sampling": False}),
    ("gp", S.GPSampler, {"_n_startup_trials": 4}),
    ("qmc", S.QMCSampler, {"_warn_independent_sampling": False, "_seed": 7 + 3}),
    ("nsga2", S.NSGAIISampler, {}),
])
def test_each_sampler_name_builds_its_type_with_the_study_settings(name, kind, settings):
    spec = _spec(name)
    sampler = make_sampler(spec, SearchSpace(spec), offset=3)
    assert type(sampler) is kind
    assert {k: getattr(sampler, k) for k in settings} == settings


def _draws(name: str, offset: int) -> list[dict]:
    spec = _spec(name)
    space = SearchSpace(spec)
    directions = ["maximize", "minimize"] if name == "nsga2" else ["maximize"]
    study = optuna.create_study(sampler=make_sampler(spec, space, offset=offset),
                                directions=directions)
    out = []
    for i in range(3):
        trial = study.ask()
        out.append(space.sample(trial))
        study.tell(trial, [float(i)] * len(directions))
    return out


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_each_sampler_is_seeded_by_the_study_seed_plus_offset(name):
    assert _draws(name, 0) == _draws(name, 0)
    assert _draws(name, 0) != _draws(name, 1)


@pytest.mark.parametrize(("name", "kind", "settings"), [
    ("hyperband", P.HyperbandPruner,
     {"_min_resource": 2, "_max_resource": 12, "_reduction_factor": 4}),
    ("asha", P.SuccessiveHalvingPruner, {"_min_resource": 2, "_reduction_factor": 4}),
    ("median", P.MedianPruner, {"_percentile": 50.0, "_n_startup_trials": 6,
                                "_n_warmup_steps": 3}),
    ("percentile", P.PercentilePruner, {"_percentile": 30.0, "_n_startup_trials": 6,
                                        "_n_warmup_steps": 3}),
    ("patient", P.PatientPruner, {"_patience": 5}),
    ("none", P.NopPruner, {}),
])
def test_each_pruner_name_builds_its_type_with_the_study_settings(name, kind, settings):
    spec = parse_study({"name": "p", "search": {"pruner": {
        "type": name, "min_resource": 2, "reduction_factor": 4, "n_startup_trials": 6,
        "n_warmup_steps": 3, "percentile": 30.0, "patience": 5}}}).search.pruner
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's experimental warning is silenced inside
        pruner = make_pruner(spec, 12)
    assert type(pruner) is kind
    assert {k: getattr(pruner, k) for k in settings} == settings
    if name == "patient":
        inner = pruner._wrapped_pruner
        assert type(inner) is P.MedianPruner
        assert (inner._n_startup_trials, inner._n_warmup_steps) == (6, 3)


def test_building_leaves_the_global_warning_filters_alone():
    before = list(warnings.filters)
    spec = parse_study({"name": "p", "search": {"pruner": {"type": "patient"}}})
    make_pruner(spec.search.pruner, 10)
    make_sampler(_spec("qmc"), SearchSpace(_spec("qmc")))
    assert warnings.filters == before


@pytest.mark.parametrize("bad", ["NSGA-II", "TPE", None, "no-op"])
def test_unknown_names_are_errors_not_defaults(bad):
    spec = _spec()
    spec.search.sampler = bad  # past pydantic, as a Python caller could
    with pytest.raises(TunetrackError, match=f"unknown search.sampler {bad!r}.*allowed: "):
        make_sampler(spec, SearchSpace(spec))
    spec.search.pruner.type = bad
    with pytest.raises(TunetrackError, match=f"unknown search.pruner.type {bad!r}.*allowed: "):
        make_pruner(spec.search.pruner, 10)


@pytest.mark.parametrize(("train", "expected"), [
    ({"max_epochs": 7}, 7),
    ({"max_epochs": {"int": [3, 40]}}, 40),
    ({"max_epochs": {"choice": [5, 30, 10]}}, 30),
    ({}, 20),  # TrainConfig's default, what a trial then trains (it used to say 100)
])
def test_hyperband_max_resource_is_the_most_epochs_a_trial_trains(train, expected):
    from tunetrack.search.samplers import most_epochs

    spec = parse_study({"name": "h", "train": train, "search": {"pruner": {"type": "hyperband"}}})
    assert most_epochs(SearchSpace(spec)) == expected
    assert make_pruner(spec.search.pruner, most_epochs(SearchSpace(spec)))._max_resource == expected
