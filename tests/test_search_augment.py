"""Augmentation knobs as study options, and the shipped regularisation / augmentation studies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest

from tunetrack.models import AugmentConfig
from tunetrack.search import load_study_file, parse_study, run_study
from tunetrack.search.samplers import make_sampler
from tunetrack.search.space import SearchSpace
from tunetrack.search.study_file import StudyFileError

from .studyfiles import tiny_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
STUDIES = Path(__file__).parents[1] / "studies"
AUGMENT = {
    "flip": {"choice": [True, False]},
    "rotation": {"float": [0, 15]},
    "mixup_alpha": {"choice": [0.0, 0.2, 0.4]},
    "cutmix_alpha": {"choice": [0.5, 1.0], "when": {"mixup_alpha": 0.0}},
    "crop_scale": {"float": [0.5, 1.0], "step": 0.25},
    "crop_padding": 1,
}


def _augment_study(**augment) -> dict:
    return tiny_study(train={"augment": {**AUGMENT, **augment}})


def test_every_augment_field_is_a_study_option():
    defaults = dataclasses.asdict(AugmentConfig())
    space = SearchSpace(parse_study(tiny_study(train={"augment": defaults})))
    assert {k: v for k, v in space.fixed.items() if k.startswith("train.augment.")} == {
        f"train.augment.{k}": v for k, v in defaults.items()
    }


def test_nested_augment_params_are_named_by_their_dotted_path_and_resolve():
    space = SearchSpace(parse_study(_augment_study()))
    searched = {d.path for d in space.dimensions}
    assert {f"train.augment.{k}" for k in AUGMENT if k != "crop_padding"} <= searched
    assert space.fixed["train.augment.crop_padding"] == 1
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_cutmix = set()
    for _ in range(30):
        trial = study.ask()
        params = space.sample(trial)
        assert set(trial.params) == set(params)  # Optuna (and MLflow) see the same names
        # `when: {mixup_alpha: 0.0}` found train.augment.mixup_alpha by its short name
        cutmix = "train.augment.cutmix_alpha" in params
        assert cutmix == (params["train.augment.mixup_alpha"] == 0.0)
        seen_cutmix.add(cutmix)
        aug = space.resolve(params).train.augment
        assert aug.flip == params["train.augment.flip"]
        assert aug.rotation == params["train.augment.rotation"] and 0 <= aug.rotation <= 15
        assert aug.mixup_alpha == params["train.augment.mixup_alpha"]
        assert aug.crop_scale in (0.5, 0.75, 1.0) and aug.crop_padding == 1
        assert aug.cutmix_alpha == params.get("train.augment.cutmix_alpha", 0.0)
        assert not aug.problems()
        study.tell(trial, 0.5)
    assert seen_cutmix == {True, False}


def test_augment_knobs_work_with_the_grid_sampler():
    spec = parse_study(
        tiny_study(
            model={"depth": 1, "width": 16, "activation": "relu"},
            train={
                "optimizer": "adam",
                "lr": 0.01,
                "augment": {
                    "flip": {"choice": [False, True]},
                    "crop_scale": {"float": [0.5, 1.0], "step": 0.5},
                    "mixup_alpha": {"choice": [0.0, 0.2]},
                },
            },
            search={"sampler": "grid"},
        )
    )
    space = SearchSpace(spec)
    assert space.grid() == {
        "train.augment.flip": [False, True],
        "train.augment.crop_scale": [0.5, 1.0],
        "train.augment.mixup_alpha": [0.0, 0.2],
    }
    study = optuna.create_study(sampler=make_sampler(spec, space))
    seen = set()
    study.optimize(lambda t: seen.add(tuple(space.sample(t).values())) or 0.0, n_trials=20)
    assert len(seen) == 8


@pytest.mark.parametrize(
    ("augment", "needle"),
    [
        (
            {"flip": {"float": [0, 1]}},
            "train.augment.flip.float: train.augment.flip is not numeric",
        ),
        (
            {"crop_padding": {"float": [0, 2]}},
            "train.augment.crop_padding.float: train.augment.crop_padding takes integers",
        ),
        ({"mixup": 0.2}, "train.augment.mixup: Extra inputs are not permitted"),
        ({"cutmix_alpha": {"choice": [0.0, "big"]}}, "train.augment.cutmix_alpha.choice: 'big'"),
    ],
)
def test_bad_augment_options_name_the_field(augment, needle):
    with pytest.raises(StudyFileError) as info:
        parse_study(tiny_study(train={"augment": augment}))
    assert needle in str(info.value)


def test_out_of_range_value_is_rejected_at_load_with_one_line_naming_it():
    """Before any trial (see test_search_validation.py for ranges, choices and the CLI)."""
    with pytest.raises(StudyFileError, match=r"train\.augment\.crop_scale must be in \(0, 1\]"):
        parse_study(tiny_study(n_trials=1, max_epochs=1, train={"augment": {"crop_scale": 1.5}}))


def test_a_study_with_augmentation_and_mixing_searched_runs(tmp_path):
    spec = parse_study(_augment_study(**{"cutmix_alpha": {"choice": [0.0, 1.0]}}))
    study = run_study(spec, n_trials=3, storage=f"sqlite:///{tmp_path}/t.db", device="cpu")
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert any(t.params["train.augment.mixup_alpha"] > 0 for t in study.trials)
    assert study.best_value > 0.5


# ---------------------------------------------------------------- shipped studies


def test_regularisation_study_is_the_full_grid_of_regularisers():
    spec = load_study_file(STUDIES / "regularisation.yaml")
    space = SearchSpace(spec)
    grid = space.grid()
    assert grid == {
        "model.dropout": [0.0, 0.3],
        "model.batch_norm": [False, True],
        "train.weight_decay": [0.0, 1.0e-3],
        "train.l1": [0.0, 1.0e-4],
        "train.seed": [0, 1, 2],
    }
    assert spec.search.sampler == "grid" and spec.search.pruner.type == "none"
    assert spec.search.n_trials == 2 * 2 * 2 * 2 * 3  # every combination, once
    fixed = space.fixed
    assert fixed["model.family"] == "mlp" and fixed["train.optimizer"] == "adam"
    assert {"model.width", "model.depth", "train.lr"} <= set(fixed)  # only regularisers vary


def test_regularisation_study_runs_quickly_with_few_epochs(tmp_path):
    spec = load_study_file(STUDIES / "regularisation.yaml")
    spec.tracking.enabled = False
    spec.train.max_epochs = 2
    study = run_study(spec, n_trials=4, storage=f"sqlite:///{tmp_path}/t.db", device="cpu")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    combos = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(combos) == 4  # the grid never repeats a combination
    for t in study.trials:
        assert set(t.params) == {
            "model.dropout",
            "model.batch_norm",
            "train.weight_decay",
            "train.l1",
            "train.seed",
        }
        assert t.value > 0.5 and 0 < t.user_attrs["test_accuracy"] <= 1


def test_augment_cnn_study_runs_quickly_with_few_epochs(tmp_path):
    spec = load_study_file(STUDIES / "augment_cnn.yaml")
    assert {d.path for d in SearchSpace(spec).dimensions} == {
        f"train.augment.{k}"
        for k in (
            "crop_padding",
            "crop_scale",
            "flip",
            "rotation",
            "brightness",
            "contrast",
            "mixup_alpha",
            "cutmix_alpha",
        )
    }
    spec.tracking.enabled = False
    spec.train.max_epochs = 1
    spec.model.width = 8
    study = run_study(spec, n_trials=2, storage=f"sqlite:///{tmp_path}/t.db", device="cpu")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
