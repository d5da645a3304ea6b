"""Scale-out building blocks without servers: storage choice, worker plans, the shared trial
budget, the stale-trial retry, the resilient tracker and the MLflow server command line."""

from __future__ import annotations

import logging
import signal
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from tunetrack.models.errors import TunetrackError
from tunetrack.search.cli import app
from tunetrack.search.shared_study import SEED_STRIDE, sampler_seed_offset
from tunetrack.search.stale_trials import STALE_REASON, Heartbeat, RetryStaleTrial
from tunetrack.search.trial_budget import SharedTrialBudget, has_heartbeats
from tunetrack.search.workers import (
    PARALLEL_DEFAULT_STORAGE,
    WorkersResult,
    parallel_storage,
    parse_gpus,
    plan_workers,
)
from tunetrack.tracking.store import is_loopback, mlflow_server_argv

from .scaleout_support import study_file

warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---- which storage N local workers share ------------------------------------------------


def test_one_worker_keeps_whatever_storage_it_was_given():
    assert parallel_storage(None, 1) is None
    assert parallel_storage("sqlite:///x.db", 1) == "sqlite:///x.db"


def test_default_sqlite_becomes_a_journal_file_for_several_workers():
    assert parallel_storage(None, 3) == PARALLEL_DEFAULT_STORAGE == "journal:tunetrack.journal"
    assert parallel_storage("sqlite:///tunetrack.db", 2) == PARALLEL_DEFAULT_STORAGE


def test_explicit_sqlite_with_several_workers_is_refused_with_the_alternatives():
    with pytest.raises(TunetrackError, match=r"database is locked.*journal:FILE.*postgresql"):
        parallel_storage("sqlite:///mine.db", 2)


@pytest.mark.parametrize("url", ["journal:j.log", "postgresql://u@h/db", "mysql://u@h/db"])
def test_journal_and_server_databases_are_used_as_given(url):
    assert parallel_storage(url, 4) == url


def test_cli_run_workers_with_explicit_sqlite_is_one_line_and_exit_2(tmp_path):
    study = study_file(tmp_path, "refuse")
    result = CliRunner().invoke(app, ["run", str(study), "--workers", "2", "--storage",
                                      f"sqlite:///{tmp_path}/x.db", "--no-tracking"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "journal:FILE" in result.stderr
    assert not (tmp_path / "x.db").exists()


# ---- worker plans -------------------------------------------------------------------------


def test_threads_are_split_so_workers_do_not_oversubscribe_the_cores():
    plans = plan_workers(Path("s.yaml"), workers=2, storage="journal:j", gpus=[], device=None,
                         worker_args=[], cores=2)
    for index, plan in enumerate(plans):
        assert plan.threads == 1
        assert plan.env["OMP_NUM_THREADS"] == "1"
        assert plan.env["TUNETRACK_WORKER_INDEX"] == str(index)
        assert plan.argv[:5] == [sys.executable, "-m", "tunetrack.search.cli", "worker",
                                 "s.yaml"]
        assert plan.argv[plan.argv.index("--threads") + 1] == "1"
        assert plan.env["TUNETRACK_STORAGE"] == "journal:j" and "--storage" not in plan.argv
        assert "CUDA_VISIBLE_DEVICES" not in plan.env or plan.gpu is None
    many = plan_workers(Path("s.yaml"), workers=3, storage=None, gpus=[], device="cpu",
                        worker_args=[], cores=16)
    assert {p.threads for p in many} == {5}
    assert plan_workers(Path("s"), workers=4, storage=None, gpus=[], device=None,
                        worker_args=[], cores=2)[0].threads == 1  # never zero


def test_each_worker_gets_its_own_gpu_round_robin():
    plans = plan_workers(Path("s.yaml"), workers=3, storage=None, gpus=["0", "1"],
                         device=None, worker_args=["--trials-total", "9"], cores=8)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plans] == ["0", "1", "0"]
    for plan in plans:
        assert plan.argv[plan.argv.index("--device") + 1] == "cuda"
        assert plan.argv[-2:] == ["--trials-total", "9"]


def test_gpu_list_parsing():
    assert parse_gpus(None) is None
    assert parse_gpus("0, 1") == ["0", "1"]
    with pytest.raises(TunetrackError, match="twice"):
        parse_gpus("0,0")
    with pytest.raises(TunetrackError, match=r"e\.g\. 0,1"):
        parse_gpus(" , ")


def test_exit_code_of_the_launcher():
    assert WorkersResult([0, 0]).exit_code == 0
    assert WorkersResult([2, 2]).exit_code == 2
    assert WorkersResult([0, -9]).exit_code == 1
    assert WorkersResult([0, 0], stopped_by=signal.SIGINT).exit_code == 130
    assert WorkersResult([143, 143], stopped_by=signal.SIGTERM).exit_code == 143


def test_workers_of_one_launch_get_distinct_reproducible_sampler_seeds(monkeypatch):
    monkeypatch.setenv("TUNETRACK_WORKER_INDEX", "3")
    assert sampler_seed_offset() == 3 * SEED_STRIDE
    monkeypatch.delenv("TUNETRACK_WORKER_INDEX")
    assert sampler_seed_offset() != sampler_seed_offset()  # hand-started: random


# ---- heartbeats, stale trials, the shared budget --------------------------------------------


def test_heartbeat_settings_are_checked():
    assert Heartbeat() == Heartbeat(10, 60, 2)
    with pytest.raises(TunetrackError, match="longer than the heartbeat interval"):
        Heartbeat(interval_s=10, grace_s=10)
    with pytest.raises(TunetrackError, match=">= 1"):
        Heartbeat(interval_s=0, grace_s=5)


def _heartbeat_study(tmp_path: Path, callback=None) -> optuna.Study:
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path}/hb.db", heartbeat_interval=1, grace_period=2,
        heartbeat_stale_trial_callback=callback)
    return optuna.create_study(study_name="hb", storage=storage)


def _dead_trial(study: optuna.Study, run_id: str | None = "run-123") -> optuna.Trial:
    """A RUNNING trial with one heartbeat and then silence, like a SIGKILLed worker's."""
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    if run_id:
        trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("reason", "should not be inherited")
    study._storage.record_heartbeat(trial._trial_id)
    return trial


def test_stale_trial_is_failed_retried_and_its_mlflow_run_ended(tmp_path, caplog):
    ended: list[tuple[str, str, str]] = []
    study = _heartbeat_study(tmp_path, RetryStaleTrial(2, lambda *a: ended.append(a)))
    dead = _dead_trial(study)
    time.sleep(3.2)
    with caplog.at_level(logging.WARNING):
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    retry = trials[-1]
    assert retry.state == optuna.trial.TrialState.WAITING
    assert retry.params == trials[dead.number].params
    assert retry.system_attrs["retry_history"] == [dead.number]
    assert "mlflow_run_id" not in retry.user_attrs and "reason" not in retry.user_attrs
    assert ended == [("run-123", "FAIL", STALE_REASON)]
    assert "queued again" in caplog.text


def test_a_failing_tracking_store_does_not_stop_the_retry(tmp_path):
    def broken(*_):
        raise ConnectionError("tracking server down")

    study = _heartbeat_study(tmp_path, RetryStaleTrial(1, broken))
    _dead_trial(study)
    time.sleep(3.2)
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[-1].state == optuna.trial.TrialState.WAITING


def _trials_run_by_one_worker(total: int) -> int:
    """Another worker finished 2 trials and is running a 3rd; how many does this one run?"""
    study = optuna.create_study()  # in-memory: no heartbeats
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    study.ask()  # in flight elsewhere
    ran: list[int] = []
    study.optimize(lambda t: ran.append(t.number) or 1.0, n_trials=20,
                   callbacks=[SharedTrialBudget(total)])
    return len(ran)


def test_budget_counts_trials_in_flight_so_workers_do_not_overshoot():
    assert _trials_run_by_one_worker(4) == 1  # 3 finished + 1 in flight = 4: stop
    assert _trials_run_by_one_worker(6) == 3
    assert _trials_run_by_one_worker(3) == 1  # the first trial of a worker always runs


def test_budget_waits_for_a_dead_workers_trial_and_then_runs_its_retry(tmp_path):
    study = _heartbeat_study(tmp_path, RetryStaleTrial(2))
    assert has_heartbeats(study._storage)
    study.tell(study.ask(), 1.0)
    _dead_trial(study, run_id=None)
    study._stop_flag = False
    started = time.monotonic()
    SharedTrialBudget(2, poll_s=0.5)(study, study.trials[0])  # 1 done + 1 "running": wait
    assert 1.5 < time.monotonic() - started < 15
    assert not study._stop_flag  # back to optimize(), which pops the queued retry
    assert study.trials[-1].state == optuna.trial.TrialState.WAITING


# ---- tunetrack server ---------------------------------------------------------------------


def test_server_command_line_binds_loopback_and_passes_extra_arguments(tmp_path):
    argv = mlflow_server_argv(backend_store_uri="postgresql+psycopg://u:p@127.0.0.1/mlflow",
                              artifacts_destination=str(tmp_path / "art"),
                              extra=["--allowed-hosts", "mlflow:5000"])
    assert argv[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "5000"
    assert argv[argv.index("--artifacts-destination") + 1] == str(tmp_path / "art")
    assert (tmp_path / "art").is_dir()
    assert argv[-2:] == ["--allowed-hosts", "mlflow:5000"]
    with pytest.raises(TunetrackError, match="--port"):
        mlflow_server_argv(backend_store_uri="x", artifacts_destination="s3://b", port=0)


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("mlflow")


def test_server_with_unreachable_backend_is_one_line_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, [
        "server", "--backend-store-uri", "postgresql+psycopg://postgres@127.0.0.1:1/mlflow",
        "--artifacts-destination", str(tmp_path / "art")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot connect to tracking database")
    assert result.stderr.count("\n") == 1
