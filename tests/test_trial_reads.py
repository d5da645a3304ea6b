"""search/trial_reads.py: counts, the latest trials and the RUNNING ones, read from the
database on RDB storages and from memory on journal ones, the same either way; and
`status` showing the latest trials with the counts of all."""

from __future__ import annotations

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
