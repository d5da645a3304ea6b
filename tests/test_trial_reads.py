"""search/trial_reads.py: counts, the latest trials and the RUNNING ones, read from the
database on RDB storages and from memory on journal ones, the same either way; and
`status` showing the latest trials with the counts of all."""

from __future__ import annotations

import html

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from typer.testing import CliRunner

from tunetrack.search.cli import app
from tunetrack.search.trial_reads import recent_trials, running_trials, state_counts


def _fill(study: optuna.Study) -> None:
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=7)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    study.ask()  # RUNNING


@pytest.fixture(params=["sqlite", "journal"])
def study(request, tmp_path) -> optuna.Study:
    storage = (f"sqlite:///{tmp_path}/o.db" if request.param == "sqlite" else
               JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))))
    created = optuna.create_study(study_name="s", storage=storage)
    _fill(created)
    return created


def test_counts_recent_and_running_agree_with_optuna(study):
    every = study.get_trials()
    assert state_counts(study) == {"COMPLETE": 7, "PRUNED": 1, "RUNNING": 1}
    assert [t.number for t in recent_trials(study, 3)] == [6, 7, 8]
    assert recent_trials(study, 3)[0].params == every[6].params
    assert [t.number for t in recent_trials(study, 50)] == list(range(9))
    assert [t.number for t in running_trials(study)] == [8]


def test_status_shows_the_last_trials_and_counts_them_all(tmp_path):
    storage = f"sqlite:///{tmp_path}/o.db"
    _fill(optuna.create_study(study_name="s", storage=storage))
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(app, ["status", "s", "--storage", storage, "--last", "2"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows] == ["7", "8"]
    assert ("9 trials: 7 COMPLETE, 1 PRUNED, 1 RUNNING; the last 2 shown (--all shows "
            "every one)") in result.stdout
    result = runner.invoke(app, ["status", "s", "--storage", storage, "--all", "-f", "json"])
    assert result.exit_code == 0 and result.stdout.count('"number"') == 9


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_compare_from_summaries_is_compare_from_whole_trials(kind, tmp_path):
    """Ranking and cost-to-target read summaries (four queries on an RDB storage) and the
    top trials whole: the same tables as reading every trial whole."""
    from tunetrack.search.trial_reads import trial_summaries, whole
    from tunetrack.tracking.reading.compare import compare_trials
    from tunetrack.tracking.reading.cost_report import COST_KEY, cost_to_target

    storage = (f"sqlite:///{tmp_path}/o.db" if kind == "sqlite" else
               JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))))
    study = optuna.create_study(study_name="c", storage=storage, direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        trial.set_user_attr(COST_KEY, 0.5 + trial.number)
        for step in range(3):
            trial.report(x * step, step)
        if trial.number % 3 == 1:
            raise optuna.TrialPruned
        return x

    study.optimize(objective, n_trials=9)
    summaries = trial_summaries(study, [COST_KEY])
    assert summaries[1].intermediate_values == {2: study.trials[1].intermediate_values[2]}
    assert summaries[4].user_attrs == {COST_KEY: 4.5}
    fast = compare_trials(study, top=5, trials=summaries,
                          whole=lambda picked: whole(study, picked))
    assert fast.equals(compare_trials(study, top=5)) and len(fast) == 5
    targets = cost_to_target(study, trials=summaries)
    assert targets.equals(cost_to_target(study)) and len(targets) == 4


def test_a_big_study_is_reported_from_its_best_and_a_spread_of_the_rest(tmp_path,
                                                                       monkeypatch):
    from tunetrack.search import cli
    from tunetrack.search.trial_reads import bounded_view

    storage = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="big", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1),
                   n_trials=40)
    view, note = bounded_view(study, 10, lambda t: (-t.values[0],))
    best = sorted(study.trials, key=lambda t: -t.value)[:5]
    numbers = [t.number for t in view.trials]
    assert len(numbers) == 10 and {t.number for t in best} <= set(numbers)
    assert numbers == sorted(numbers) and numbers[0] <= 7  # spread from the start
    assert view.best_value == study.best_value
    assert note == ("the report draws 10 of the study's 40 trials (40 COMPLETE): the 5 "
                    "best and 5 spread over its course")
    assert bounded_view(study, 40, lambda t: (0,)) == (study, None)
    monkeypatch.setattr(cli, "REPORT_MAX_TRIALS", 10)
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", "big", "--storage", storage, "--out", str(out),
                                      "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 0, result.output
    assert html.escape(note) in out.read_text() and note in result.stderr
