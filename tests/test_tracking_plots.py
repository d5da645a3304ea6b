"""The study's plots: drawn partly in a second process, importances computed once and the
same each time, the report built from the figures just drawn."""

from __future__ import annotations

import optuna
import pytest

from tunetrack.tracking import pictures
from tunetrack.tracking.pictures import (
    ASIDE,
    PlotDrawer,
    plot_choice,
    png_of,
    study_copy,
    write_plots,
)
from tunetrack.tracking.reading import build_report


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    """12 trials of 3 parameters (one on a log scale) that report 4 epochs; some pruned."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=3))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        width = trial.suggest_int("width", 16, 256)
        act = trial.suggest_categorical("act", ["relu", "gelu"])
        value = 0.0
        for epoch in range(4):
            value = 0.5 + 0.1 * epoch - abs(lr - 0.01) - width / 5000 + (act == "gelu") * 0.02
            trial.report(value, epoch)
            if trial.number % 4 == 3 and epoch == 1:
                raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=12)
    return study


@pytest.fixture()
def drawer():
    started = PlotDrawer.start()
    if started is None:
        pytest.skip("one core: no drawer process")
    yield started
    started.close()


def test_the_drawer_process_draws_what_this_process_would(study, drawer) -> None:
    copy = study_copy("s", study.get_trials(deepcopy=False), ["MAXIMIZE"])
    assert drawer.submit(list(ASIDE), copy.get_trials(deepcopy=False), ["MAXIMIZE"])
    drawn = drawer.collect()
    assert set(drawn) == set(ASIDE)
    for name in ASIDE:
        here = png_of(plot_choice.plot_list(copy)[0][name][1], copy)
        assert drawn[name] == here, name  # byte for byte: the same picture


def test_write_plots_with_a_drawer_writes_every_plot(study, drawer, tmp_path) -> None:
    alone, beside = tmp_path / "alone", tmp_path / "beside"
    alone.mkdir()
    beside.mkdir()
    copy = study_copy("s", study.get_trials(deepcopy=False), ["MAXIMIZE"])
    by_itself = write_plots(copy, alone)
    with_drawer = write_plots(copy, beside, drawer)
    assert sorted(with_drawer.written) == sorted(by_itself.written)
    assert {f"{n}.png" for n in ASIDE} <= set(with_drawer.written)
    assert with_drawer.skipped == by_itself.skipped
    for name in ASIDE:
        assert (beside / f"{name}.png").read_bytes() == (alone / f"{name}.png").read_bytes()


def test_a_dead_drawer_costs_no_plot(study, drawer, tmp_path) -> None:
    drawer._proc.kill()
    drawer._proc.wait()
    copy = study_copy("s", study.get_trials(deepcopy=False), ["MAXIMIZE"])
    summary = write_plots(copy, tmp_path, drawer)
    for name in ASIDE:
        # drawn here instead: the very picture this process draws of the study
        here = png_of(plot_choice.plot_list(copy)[0][name][1], copy)
        assert (tmp_path / f"{name}.png").read_bytes() == here, name
        assert name not in summary.skipped


def test_importances_are_computed_once_and_the_same_every_time(study, tmp_path,
                                                               monkeypatch) -> None:
    from optuna.importance import FanovaImportanceEvaluator

    calls = []
    real = FanovaImportanceEvaluator.evaluate
    monkeypatch.setattr(FanovaImportanceEvaluator, "evaluate",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    copy = study_copy("s", study.get_trials(deepcopy=False), ["MAXIMIZE"])
    first = write_plots(copy, tmp_path)
    assert len(calls) == 1  # contour/rank ranking, plotly and matplotlib importances
    again = write_plots(copy, tmp_path)
    for name in ("param_importances", "contour", "rank"):
        assert first.figures[name].to_json() == again.figures[name].to_json(), name


def test_the_study_copy_hands_out_trials_uncopied_and_unchanged(study) -> None:
    copy = study_copy("s", study.get_trials(deepcopy=False), ["MAXIMIZE"])
    assert copy.trials[0] is copy.trials[0]  # no deep copy per call
    assert [t.params for t in copy.trials] == [t.params for t in study.trials]
    assert copy.best_value == study.best_value


def test_the_report_shows_the_figures_just_drawn(study, tmp_path, monkeypatch) -> None:
    copy = study_copy("s", study.get_trials(deepcopy=False), ["MAXIMIZE"])
    drawn = write_plots(copy, tmp_path)

    def never(*_):
        pytest.fail("drawn again")

    # the door keeps what it handed out: patched first, so that what it restores is the
    # real function, not the patch it would otherwise fetch from plot_choice
    for holder in (pictures, plot_choice):
        monkeypatch.setattr(holder, "plot_list", never)
    page, summary = build_report(copy, drawn=drawn)
    assert sorted(summary.plots) == sorted(drawn.figures)
    for name in drawn.figures:
        assert f'id="plot-{name}"' in page


def test_a_stuck_drawer_is_stopped_and_its_plots_drawn_here(study, drawer, tmp_path) -> None:
    import os
    import signal

    copy = study_copy("s", study.get_trials(deepcopy=False), ["MAXIMIZE"])
    os.kill(drawer._proc.pid, signal.SIGSTOP)  # alive but never answering
    assert drawer.submit(list(ASIDE), copy.get_trials(deepcopy=False), ["MAXIMIZE"])
    assert drawer.collect(timeout=0.5) is None
    assert drawer._proc.wait(timeout=10) != 0  # stopped for good
    summary = write_plots(copy, tmp_path, drawer)  # a dead drawer: drawn here
    assert {f"{n}.png" for n in ASIDE} <= set(summary.written)


def test_an_answer_nobody_collected_is_not_taken_for_the_next_one(study, drawer) -> None:
    copy = study_copy("s", study.get_trials(deepcopy=False), ["MAXIMIZE"])
    trials = copy.get_trials(deepcopy=False)
    assert drawer.submit(["timeline"], trials, ["MAXIMIZE"])  # never collected
    assert drawer.submit(["intermediate_values"], trials, ["MAXIMIZE"])
    assert set(drawer.collect()) == {"intermediate_values"}
