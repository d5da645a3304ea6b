"""A study that survives its database: connections terminated mid-study and a database that
refuses connections for seconds (what a PostgreSQL restart looks like to a client), against
the real local server; and which errors are retried at all (search/reconnecting_storage.py).

The server itself is shared and never restarted here: the "restart" is this test's own
database refusing new connections while its open ones are terminated.
"""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy.exc

from tunetrack.search import reconnecting_storage
from tunetrack.search.reconnecting_storage import lost_connection, reconnecting

from .scaleout_support import _admin, load_study, pg_url, stop, study_file  # noqa: F401

CLI = [sys.executable, "-m", "tunetrack.search.cli"]


def _wrapped(exc: Exception) -> optuna.exceptions.StorageInternalError:
    """What Optuna's RDBStorage raises: its own error, the SQLAlchemy one as the cause."""
    try:
        raise optuna.exceptions.StorageInternalError("during the commit") from exc
    except optuna.exceptions.StorageInternalError as wrapped:
        return wrapped


LOST = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(
    "terminating connection due to administrator command"))
DUPLICATE = sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key value"))


def test_only_a_lost_connection_is_retried(monkeypatch):
    monkeypatch.setattr(reconnecting_storage, "RETRY_PAUSES_S", (0.0, 0.0))
    assert lost_connection(LOST) and lost_connection(_wrapped(LOST))
    assert not lost_connection(DUPLICATE) and not lost_connection(_wrapped(DUPLICATE))
    assert not lost_connection(KeyError("no such study"))
    calls = []

    def flaky(fails: list[Exception]):
        @reconnecting
        def call() -> str:
            calls.append(1)
            if fails:
                raise fails.pop(0)
            return "done"
        return call

    assert flaky([_wrapped(LOST), LOST])() == "done" and len(calls) == 3
    calls.clear()
    with pytest.raises(optuna.exceptions.StorageInternalError):  # a logic error: at once
        flaky([_wrapped(DUPLICATE)])()
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError):  # bounded: 1 + 2 retries
        flaky([LOST] * 5)()
    assert len(calls) == 3


def _terminate_connections(database: str, *, seconds: float) -> int:
    """Terminate every connection to `database` (this test's own), again and again for
    `seconds`: idle pooled ones and ones in the middle of a statement. How many ended."""
    ended = 0
    deadline = time.monotonic() + seconds
    with _admin() as conn:
        while time.monotonic() < deadline:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchall()
            ended += sum(bool(r[0]) for r in rows)
            time.sleep(0.1)
    return ended


def _refuse_connections(database: str, *, seconds: float) -> int:
    """A restart as the study sees it: new connections refused and open ones terminated
    for `seconds`, then accepted again."""
    with _admin() as conn:
        conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        try:
            return _terminate_connections(database, seconds=seconds)
        finally:
            conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("outage", [_terminate_connections, _refuse_connections],
                         ids=["pg_terminate_backend", "restart"])
def test_a_study_survives_its_database_connections_dropping(pg_url, tmp_path, outage):  # noqa: F811
    """Mid-study, every connection of the study's database is terminated (and, as in a
    restart, new ones refused) for seconds: each cut call is retried, the trial in flight
    finishes, the study runs all its trials and exits 0 without a traceback."""
    study = study_file(tmp_path, "pg-outage", n_trials=6, epochs=40, batch_size=16)
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*CLI, "run", str(study), "--storage", pg_url,
                                 "--no-tracking", "--no-progress"], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not _mid_second_trial(pg_url):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        ended = outage(pg_url.rsplit("/", 1)[1], seconds=4.0)
        rc = proc.wait(300)
    finally:
        stop(proc, 9)
    output = log.read_text()
    assert ended >= 1  # the study's connections really were cut
    assert rc == 0 and "Traceback" not in output, output
    assert "study database connection was lost" in output, output
    trials = load_study("pg-outage", pg_url).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6, output


def _mid_second_trial(storage: str) -> bool:
    try:
        trials = load_study("pg-outage", storage).get_trials(deepcopy=False)
    except KeyError:
        return False
    return (any(t.state.name == "COMPLETE" for t in trials)
            and any(t.state.name == "RUNNING" and t.intermediate_values for t in trials))
