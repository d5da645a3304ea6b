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


@pytest.mark.parametrize("threads", [None, 2])
def test_cpu_threads_default_to_one_and_an_explicit_count_is_kept(tmp_path, monkeypatch,
                                                                  threads):
    import torch

    from tunetrack.search import parse_study

    from .studyfiles import tiny_study

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        run_study(parse_study(tiny_study(n_trials=1, max_epochs=1)), device="cpu",
                  storage=f"sqlite:///{tmp_path}/t.db", threads=threads)
        assert torch.get_num_threads() == (threads or 1)
    finally:
        torch.set_num_threads(previous)
