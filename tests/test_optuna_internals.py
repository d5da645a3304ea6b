"""search/optuna_internals.py against the installed Optuna: one test per private name, so
an Optuna release that moves one fails here, by name, and not inside a worker. Also: no
other module reaches into Optuna's private names."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from tunetrack.search import optuna_internals as internals

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rdb_study(tmp_path) -> optuna.Study:
    """A study on an RDB storage with heartbeats, as workers open them (SQLite here)."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}",
                                         heartbeat_interval=1, grace_period=30)
    return optuna.create_study(study_name="internals", storage=storage)


def test_study_storage(rdb_study):
    storage = internals.study_storage(rdb_study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    trial = rdb_study.ask()
    assert storage.get_trial(trial._trial_id).number == trial.number  # the study's own store


def test_study_id(rdb_study):
    storage = internals.study_storage(rdb_study)
    assert internals.study_id(rdb_study) == storage.get_study_id_from_name("internals")


def test_trial_id(rdb_study):
    trial = rdb_study.ask()
    storage = internals.study_storage(rdb_study)
    assert storage.get_trial(internals.trial_id(trial)).number == trial.number
    rdb_study.tell(trial, 1.0)
    (frozen,) = rdb_study.get_trials()
    assert internals.trial_id(frozen) == internals.trial_id(trial)


def test_uncached_storage(rdb_study):
    cached = internals.study_storage(rdb_study)
    backend = internals.uncached_storage(cached)
    assert isinstance(backend, optuna.storages.RDBStorage)
    assert backend.grace_period == 30 and backend.get_heartbeat_interval() == 1
    assert internals.uncached_storage(backend) is backend  # not cached: itself
    memory = optuna.storages.InMemoryStorage()
    assert internals.uncached_storage(memory) is memory


def test_trial_state_counts(rdb_study):
    rdb_study.optimize(lambda t: 1.0, n_trials=3)
    rdb_study.ask()  # one RUNNING
    pruned = rdb_study.ask()
    rdb_study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    counts = internals.trial_state_counts(internals.study_storage(rdb_study),
                                          internals.study_id(rdb_study))
    assert counts == {"COMPLETE": 3, "RUNNING": 1, "PRUNED": 1}
    memory = optuna.create_study()
    assert internals.trial_state_counts(internals.study_storage(memory), 0) is None


def test_trial_rows(rdb_study):
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("cost", trial.number * 2.0)
        trial.report(0.25, 0)
        trial.report(float("inf"), 4)
        return 0.5 + trial.number

    rdb_study.optimize(objective, n_trials=2)
    rows = internals.trial_rows(internals.study_storage(rdb_study),
                                internals.study_id(rdb_study), ("cost",))
    whole = rdb_study.get_trials()
    assert [r["number"] for r in rows] == [0, 1]
    assert [r["trial_id"] for r in rows] == [internals.trial_id(t) for t in whole]
    assert rows[1]["state"] == optuna.trial.TrialState.COMPLETE
    assert rows[1]["values"] == {0: 1.5} and rows[1]["user_attrs"] == {"cost": 2.0}
    assert rows[1]["last_report"] == (4, float("inf"))
    assert rows[1]["datetime_complete"] - rows[1]["datetime_start"] == whole[1].duration
    assert internals.trial_rows(optuna.storages.InMemoryStorage(), 0, ()) is None


def test_heartbeat_thread(rdb_study):
    trial = rdb_study.ask()
    backend = internals.uncached_storage(internals.study_storage(rdb_study))

    def beats() -> int:
        with backend.engine.connect() as conn:
            return conn.execute(sqlalchemy.text("SELECT count(*) FROM trial_heartbeats")).scalar()

    assert beats() == 0
    thread = internals.heartbeat_thread(trial)
    thread.__enter__()
    try:
        deadline = time.monotonic() + 10
        while beats() == 0:
            assert time.monotonic() < deadline, "no heartbeat recorded"
            time.sleep(0.05)
    finally:
        thread.__exit__(None, None, None)
    # without heartbeats: a thread that does nothing, entered and left the same way
    plain = optuna.create_study()
    with internals.heartbeat_thread(plain.ask()):
        pass


def test_optimize_logger(caplog):
    def objective(trial: optuna.Trial) -> float:
        raise ValueError("boom")

    study = optuna.create_study()
    with caplog.at_level(logging.WARNING, logger=internals.OPTIMIZE_LOGGER):
        study.optimize(objective, n_trials=1, catch=(ValueError,))
    assert internals.optimize_logger().name == internals.OPTIMIZE_LOGGER
    failed = [r for r in caplog.records if r.name == internals.OPTIMIZE_LOGGER
              and re.match(r"Trial 0 failed", r.getMessage())]
    assert failed, [(r.name, r.getMessage()) for r in caplog.records]


_PRIVATE = re.compile(r"\bstudy\._storage\b|\._backend\b|\._study_id\b|\._trial_id\b"
                      r"|optuna\.\w+(\.\w+)*\._\w+|from optuna[\w.]*\._\w+ import")



def test_no_private_optuna_names_outside_the_module():
    """Every private name goes through search/optuna_internals.py."""
    offenders = []
    for folder in ("models", "search", "tracking"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "optuna_internals.py":
                continue
            name = str(path.relative_to(REPO))
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if _PRIVATE.search(code):
                    offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
