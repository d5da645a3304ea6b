"""End-to-end: the shipped digits study reaches the accuracy the README promises."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tunetrack.search import load_study_file, run_study

STUDY = Path(__file__).parents[1] / "studies" / "digits.yaml"
NAMED_PARAMS = {
    "model.depth",
    "model.width",
    "model.init",
    "model.dropout",
    "model.activation",
    "model.batch_norm",
    "train.weight_decay",
    "train.l1",
    "train.lr",
    "train.scheduler",
    "train.optimizer",
    "train.batch_size",
    "train.augment.crop_padding",
}


@pytest.mark.slow
def test_digits_study_30_trials(tmp_path):
    spec = load_study_file(STUDY)
    spec.tracking.enabled = False
    study = run_study(spec, n_trials=30, storage=f"sqlite:///{tmp_path}/t.db")
    states = [t.state for t in study.trials]
    assert len(states) == 30
    assert study.best_value >= 0.97
    assert study.best_trial.user_attrs["test_accuracy"] >= 0.96
    assert states.count(optuna.trial.TrialState.PRUNED) >= 30 / 4
    seen = {name for t in study.trials for name in t.params}
    assert seen >= NAMED_PARAMS
    # conditional knobs appear exactly when their parent says so
    for t in study.trials:
        assert ("train.momentum" in t.params) == (t.params["train.optimizer"] == "sgd")
        assert ("train.step_gamma" in t.params) == (t.params["train.scheduler"] == "step")


def test_digits_study_short(tmp_path):
    """A quick cut of the same study: every trial ends in a definite state with its record."""
    spec = load_study_file(STUDY)
    spec.tracking.enabled = False
    spec.train.max_epochs = 4
    study = run_study(spec, n_trials=6, storage=f"sqlite:///{tmp_path}/t.db")
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    for t in study.trials:
        assert 1 <= t.user_attrs["epochs_run"] <= 4
        assert t.intermediate_values, "every trial reports every epoch"
        if t.state.name == "COMPLETE":
            assert 0 < t.user_attrs["test_accuracy"] <= 1
            best_epoch = t.user_attrs["best_epoch"]
            assert t.value == pytest.approx(t.intermediate_values[best_epoch])
