"""A fused group asks its pruner with one read of the study per group epoch
(`search/pruning_round.py`): the same decisions as every member asking the live study, far
fewer reads, and the live path kept for pruners that write as they decide."""

from __future__ import annotations

import optuna
import pytest

from tunetrack.search import fused_study
from tunetrack.search.fused_groups import GROUP_ATTR
from tunetrack.search.pruning_round import PruningRound, StudyAsRead
from tunetrack.search.runner import run_study
from tunetrack.search.study_file import load_study_file

from .studyfiles import write_study


def _fused_study(tmp_path, name: str, pruner: dict, monkeypatch, *, rounds: bool):
    """A random-sampler study fused 4 at a time on SQLite, pruned from epoch 2; counts the
    study reads (`Study.get_trials`) and the rounds."""
    if not rounds:
        monkeypatch.setattr(fused_study, "SNAPSHOT_PRUNERS", frozenset())
    calls = {"reads": 0, "rounds": 0}
    get_trials, report = optuna.Study.get_trials, PruningRound.report

    def counted_get_trials(self, *args, **kwargs):
        calls["reads"] += 1
        return get_trials(self, *args, **kwargs)

    def counted_report(self, reports):
        calls["rounds"] += 1
        return report(self, reports)

    monkeypatch.setattr(optuna.Study, "get_trials", counted_get_trials)
    monkeypatch.setattr(PruningRound, "report", counted_report)
    file = write_study(tmp_path, name, n_trials=14, max_epochs=6,
                       search={"fuse": 4, "sampler": "random", "pruner": pruner})
    spec = load_study_file(file)
    study = run_study(spec, storage=f"sqlite:///{tmp_path}/{name}.db")
    monkeypatch.undo()
    return study, calls


def _outcomes(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state.name, t.params, t.intermediate_values, t.user_attrs.get(GROUP_ATTR),
             t.user_attrs.get("reason")) for t in study.trials]


def test_one_read_per_group_epoch_gives_the_live_studys_decisions(tmp_path, monkeypatch):
    median = {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1}
    live, live_calls = _fused_study(tmp_path, "live", median, monkeypatch, rounds=False)
    read, read_calls = _fused_study(tmp_path, "read", median, monkeypatch, rounds=True)
    assert _outcomes(read) == _outcomes(live)  # same states, reports, reasons, groups
    pruned = [t for t in read.trials if t.state.name == "PRUNED" and GROUP_ATTR in t.user_attrs]
    assert len(pruned) >= 3 and all("pruned by MedianPruner" in t.user_attrs["reason"]
                                    for t in pruned)
    # every member-epoch asked the pruner, which read the study each time; a round reads once
    member_epochs = sum(len(t.intermediate_values) for t in read.trials)
    assert live_calls["rounds"] == 0 and read_calls["rounds"] >= member_epochs / 4
    assert live_calls["reads"] - read_calls["reads"] == member_epochs - read_calls["rounds"]
    assert read_calls["rounds"] < member_epochs / 2  # groups of ~4: ~1 read per 4 answers


def test_pruners_that_write_as_they_decide_ask_the_live_study(tmp_path, monkeypatch):
    asha = {"type": "asha", "min_resource": 1, "reduction_factor": 2}
    study, calls = _fused_study(tmp_path, "asha", asha, monkeypatch, rounds=True)
    assert calls["rounds"] == 0
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and all("SuccessiveHalvingPruner" in t.user_attrs["reason"] for t in pruned)


def test_a_round_answers_only_for_members_it_reported(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/r.db", direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=0))
    done = study.ask()
    for epoch in range(3):
        done.report(0.9, epoch)
    study.tell(done, 0.9)
    trial = study.ask()
    round_ = PruningRound(study)
    with pytest.raises(RuntimeError, match="trial 1: pruning asked for epoch 0 before"):
        round_.should_prune(trial, 0)
    round_.report([(trial, 0.5, 0)])
    assert round_.should_prune(trial, 0)  # 0.5 < the median 0.9 at epoch 0
    with pytest.raises(RuntimeError, match="epoch 1 before"):
        round_.should_prune(trial, 1)  # reported 0 only: the read is a round old
    read = StudyAsRead(study)
    states = (optuna.trial.TrialState.COMPLETE,)
    assert [t.number for t in read.get_trials(states=states)] == [0]
    assert read.direction == optuna.study.StudyDirection.MAXIMIZE and read.trials[1].number == 1
