"""Search space: define-by-run sampling, conditions, resolution into a TrialConfig."""

from __future__ import annotations

import optuna

from tunetrack.search.space import SearchSpace
from tunetrack.search.study_file import parse_study

from .studyfiles import tiny_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space_of(**overrides) -> SearchSpace:
    return SearchSpace(parse_study(tiny_study(**overrides)))


def test_conditional_parameters_are_sampled_only_when_their_parent_matches():
    space = space_of()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_optimizers = set()
    for _ in range(30):
        trial = study.ask()
        params = space.sample(trial)
        seen_optimizers.add(params["train.optimizer"])
        assert ("train.momentum" in params) == (params["train.optimizer"] == "sgd")
        study.tell(trial, 0.5)
    assert seen_optimizers == {"adam", "sgd"}


def test_explicit_when_with_a_list_of_values():
    space = space_of(
        train={
            "scheduler": {"choice": ["none", "step", "exponential"]},
            "step_gamma": {"float": [0.1, 0.9], "when": {"scheduler": ["step", "exponential"]}},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = space.sample(study.ask())
        assert ("train.step_gamma" in params) == (params["train.scheduler"] != "none")


def test_resolve_builds_a_trial_config_from_fixed_and_sampled_values():
    space = space_of()
    cfg = space.resolve(
        {"model.depth": 2, "train.lr": 0.01, "train.optimizer": "sgd", "train.momentum": 0.85},
        device="cpu",
    )
    assert cfg.model.depth == 2 and cfg.model.family == "mlp"
    assert cfg.train.lr == 0.01 and cfg.train.momentum == 0.85 and cfg.train.max_epochs == 3
    assert cfg.train.device == "cpu" and cfg.data.name == "digits"


def test_nested_sections_are_searchable():
    space = space_of(
        train={
            "augment": {"flip": {"choice": [True, False]}},
            "early_stopping": {"patience": {"int": [2, 5]}},
        }
    )
    paths = {d.path for d in space.dimensions}
    assert {"train.augment.flip", "train.early_stopping.patience"} <= paths
    cfg = space.resolve({"train.augment.flip": True, "train.early_stopping.patience": 4})
    assert cfg.train.augment.flip is True and cfg.train.early_stopping.patience == 4


def test_same_seed_same_trials():
    from tunetrack.search.samplers import make_sampler

    def params(seed: int) -> list[dict]:
        spec = parse_study(tiny_study(seed=seed))
        space = SearchSpace(spec)
        study = optuna.create_study(sampler=make_sampler(spec, space))
        out = []
        for i in range(6):
            trial = study.ask()
            out.append(space.sample(trial))
            study.tell(trial, float(i % 3))
        return out

    assert params(0) == params(0)
    assert params(0) != params(1)


def test_grid_sampler_enumerates_the_grid():
    from tunetrack.search.samplers import make_sampler

    spec = parse_study(
        tiny_study(
            model={
                "depth": {"int": [1, 2]},
                "width": 32,
                "activation": {"choice": ["relu", "tanh"]},
            },
            train={"max_epochs": 2, "lr": 0.01, "optimizer": "adam"},
            search={"sampler": "grid"},
        )
    )
    space = SearchSpace(spec)
    assert space.grid() == {"model.depth": [1, 2], "model.activation": ["relu", "tanh"]}
    study = optuna.create_study(sampler=make_sampler(spec, space))
    seen = set()

    def objective(trial: optuna.Trial) -> float:
        seen.add(tuple(space.sample(trial).values()))
        return 0.0

    study.optimize(objective, n_trials=10)  # the grid sampler stops the study when done
    assert len(seen) == 4 and len(study.trials) == 4
