"""Workers sharing one study on PostgreSQL: the budget across workers, one MLflow run per
trial, a worker killed mid-trial, bad storage URLs and a tracking server that dies.

Each test gets its own database (`pg_url`); all skip when PostgreSQL is not reachable.
The server here trusts local connections, so a wrong *password* is accepted: the bad-URL
test uses a wrong host/port, database and user instead.
"""

from __future__ import annotations

import os
import re
import signal
import time

import optuna
import pytest
from typer.testing import CliRunner

from tunetrack.search.cli import app

from .scaleout_support import (
    MlflowServer,
    _admin,
    check_shared_study,
    finished,
    load_study,
    mlflow_store,
    pg_url,  # noqa: F401  (fixture)
    start_worker,
    stop,
    study_file,
    trial_runs,
    wait_all,
)

pytestmark = pytest.mark.postgres
STATE = optuna.trial.TrialState


# ---- several workers, one study -------------------------------------------------------------


@pytest.mark.slow
def test_four_workers_24_trials_on_a_real_mlflow_server(pg_url, tmp_path):  # noqa: F811
    server = MlflowServer(tmp_path).start()
    try:
        study = study_file(tmp_path, "pg-four", n_trials=24)
        workers = [start_worker(study, pg_url, "--tracking-uri", server.uri, cwd=tmp_path,
                                env={"TUNETRACK_WORKER_INDEX": str(i)}, log_name=f"w{i}")
                   for i in range(4)]
        codes = wait_all(workers, timeout_s=900)
        logs = "".join(p.read_text() for p in tmp_path.glob("w*.log"))
        assert codes == [0, 0, 0, 0], logs
        check_shared_study(load_study("pg-four", pg_url), 24, 4, server.uri, "pg-four")
    finally:
        server.stop()


# ---- a worker killed mid-trial ----------------------------------------------------------


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.slow
def test_sigkilled_worker_trial_is_failed_retried_and_its_run_ended(pg_url, tmp_path):  # noqa: F811
    # slow-ish trials (150 epochs, a few seconds) so that the kill lands mid-trial; 1 s
    # heartbeat, 3 s grace
    study_path = study_file(tmp_path, "pg-kill", n_trials=4, epochs=150, batch_size=16,
                            sampler="random")
    tracking = mlflow_store(tmp_path, "pg-kill")
    fast_heartbeat = ("--heartbeat-interval", "1", "--grace-period", "3", "--max-retry", "1")
    victim = start_worker(study_path, pg_url, "--tracking-uri", tracking, *fast_heartbeat,
                          cwd=tmp_path, log_name="victim")

    def victim_mid_second_trial():
        try:
            study = load_study("pg-kill", pg_url)
        except KeyError:
            return None
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == STATE.COMPLETE]
        running = [t for t in trials if t.state == STATE.RUNNING and t.intermediate_values
                   and "mlflow_run_id" in t.user_attrs]
        return (complete, running[0]) if complete and running else None

    completed_before, killed = _wait_for(victim_mid_second_trial, 240, "a trial mid-way")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    assert load_study("pg-kill", pg_url).trials[killed.number].state == STATE.RUNNING

    rescuer = start_worker(study_path, pg_url, "--tracking-uri", tracking, *fast_heartbeat,
                           cwd=tmp_path, log_name="rescuer")
    assert wait_all([rescuer], timeout_s=400) == [0], (tmp_path / "rescuer.log").read_text()

    study = load_study("pg-kill", pg_url)
    dead = study.trials[killed.number]
    assert dead.state == STATE.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("retry_history") == [dead.number]]
    assert len(retries) == 1 and retries[0].params == dead.params
    assert retries[0].state in (STATE.COMPLETE, STATE.PRUNED)
    assert len(finished(study)) == 4
    for before in completed_before:  # nothing completed is lost
        assert study.trials[before.number].state == STATE.COMPLETE
        assert study.trials[before.number].values == before.values

    runs = {r.info.run_id: r for r in trial_runs(tracking, "pg-kill")}
    dead_run = runs[killed.user_attrs["mlflow_run_id"]]
    assert dead_run.info.status == "FAILED"  # not left RUNNING
    assert dead_run.data.tags["optuna.state"] == "FAIL"
    # found by its stale heartbeat, or (the rescuer runs on the same host) by its pid gone
    reason = dead_run.data.tags["optuna.reason"]
    assert reason == "worker died (stale heartbeat)" or re.fullmatch(
        rf"process died \(pid {victim.pid} on .+\); found by pid \d+", reason), reason
    assert reason == dead.user_attrs["reason"]
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


# ---- bad input ----------------------------------------------------------------------------


@pytest.fixture
def postgres_up() -> None:
    with _admin():
        pass


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://postgres@127.0.0.1:1/postgres", "Connection refused"),
        ("postgresql://postgres@127.0.0.1:5432/tunetrack_no_such_db", "does not exist"),
        ("postgresql://no_such_user@127.0.0.1:5432/postgres", 'role "no_such_user"'),
    ],
    ids=["wrong-host-port", "wrong-database", "wrong-user"],
)
def test_bad_storage_url_is_one_line_exit_2_fast(postgres_up, tmp_path, url, says):
    study = study_file(tmp_path, "bad-url")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["worker", str(study), "--storage", url, "--no-tracking"])
    assert time.monotonic() - started < 10
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: cannot open storage postgresql://")
    assert says in result.stderr


# ---- the tracking server dies mid-study ---------------------------------------------------


@pytest.mark.slow
def test_tracking_server_down_mid_study_warns_and_trials_still_complete(pg_url, tmp_path):  # noqa: F811
    server = MlflowServer(tmp_path).start()
    study_path = study_file(tmp_path, "pg-down", n_trials=6, epochs=3)
    worker = start_worker(study_path, pg_url, "--tracking-uri", server.uri, cwd=tmp_path)
    try:
        _wait_for(lambda: _finished_count("pg-down", pg_url) >= 2, 300, "two trials")
        server.stop()  # mid-study
        assert wait_all([worker], timeout_s=400) == [0]
    finally:
        stop(worker, signal.SIGKILL)
        server.stop()
    log = (tmp_path / "worker.log").read_text()
    assert "warning: MLflow tracking failed" in log
    assert "Traceback" not in log
    study = load_study("pg-down", pg_url)
    assert len(finished(study)) == 6
    assert all(t.state == STATE.COMPLETE for t in study.trials)


def _finished_count(name: str, storage: str) -> int:
    try:
        return len(finished(load_study(name, storage)))
    except KeyError:
        return 0
