"""Faults of the processes around a study, on real processes: SIGTERM (what `docker stop`
and Kubernetes send) to `run`, `worker` and `run --workers N`, and a killed tracking helper.
docs/faults.md, "Processes and the database", says what each test guarantees."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from tunetrack.search.storage import open_storage
from tunetrack.tracking import tags as T

from .scaleout_support import stop, study_file
from .studyfiles import wait_mid_trial, write_study

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tunetrack.search.cli"]
LONG_TRIALS = dict(n_trials=50, max_epochs=40, tracking={"enabled": True},
                   train={"batch_size": 32, "early_stopping": {"patience": None}},
                   search={"pruner": {"type": "none"}})


def grace_period_s() -> float:
    """The shorter of the grace periods Kubernetes (workers.yaml) and compose give a worker
    between the stop signal and SIGKILL."""
    job = yaml.safe_load((ROOT / "deploy/kubernetes/workers.yaml").read_text())
    kubernetes = job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    text = compose["x-worker"]["stop_grace_period"]
    default = re.search(r":-(\d+)s}", text)[1]  # ${WORKER_STOP_GRACE:-60s}
    return min(float(kubernetes), float(default))


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(p) for p in out.split()]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def signal_mid_trial(proc: subprocess.Popen, storage: str, sig: int) -> tuple[float, str]:
    """Send `sig` once a trial completed and the next runs; (seconds until the process
    ended, its stderr). Checks that every child (the tracking helper) ended with it."""
    wait_mid_trial(storage, "tiny", max_epochs=40, user_attr="mlflow_run_id")
    helpers = children(proc.pid)
    assert helpers, "no tracking helper"
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=grace_period_s())
    finally:
        stop(proc, signal.SIGKILL)
    took = time.monotonic() - sent
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(gone(pid) for pid in helpers), "the tracking helper outlived the study"
    return took, stderr


def check_terminated(storage: str, tracking_uri: str, stderr: str) -> None:
    """The running trial FAIL `terminated (SIGTERM)`, its run FAILED, every other run
    ended, the parent KILLED; one line on stderr."""
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert "RUNNING" not in {t.state.name for t in trials}
    assert trials[-1].state.name == "FAIL"
    assert trials[-1].user_attrs["reason"] == "terminated (SIGTERM)"
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}
    (parent,) = [r for r in runs if r.data.tags.get(T.ROLE) == T.ROLE_PARENT]
    assert parent.info.status == "KILLED"
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert [r.data.tags[T.OPTUNA_TRIAL] for r in failed] == [str(trials[-1].number)]
    assert failed[0].data.tags[T.OPTUNA_REASON] == "terminated (SIGTERM)"
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_sigterm_ends_run_like_ctrl_c_with_exit_143(tmp_path, template_db):
    """`tunetrack run` given SIGTERM mid-trial: exit 143 within the grace period, one line,
    the trial FAIL (terminated), its run FAILED, the parent KILLED, the helper drained.
    In the fast suite, as the Ctrl-C test (tests/test_cli.py); a migrated mlflow.db saves
    MLflow's schema setup."""
    shutil.copy(template_db, tmp_path / "mlflow.db")
    file = write_study(tmp_path, **LONG_TRIALS)
    proc = subprocess.Popen([*CLI, "run", str(file), "--no-progress"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    storage = f"sqlite:///{tmp_path}/tunetrack.db"
    took, stderr = signal_mid_trial(proc, storage, signal.SIGTERM)
    assert (proc.returncode, stderr.splitlines()[-1]) == (143, "terminated"), stderr
    assert took < grace_period_s()
    check_terminated(storage, f"sqlite:///{tmp_path}/mlflow.db", stderr)


@pytest.mark.slow
def test_sigterm_ends_a_worker_like_ctrl_c_with_exit_143(tmp_path):
    """`tunetrack worker` (a Kubernetes pod's PID 1 gets SIGTERM): the same guarantees."""
    file = write_study(tmp_path, **LONG_TRIALS)
    storage = f"journal:{tmp_path}/study.journal"
    proc = subprocess.Popen([*CLI, "worker", str(file), "--storage", storage,
                             "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    took, stderr = signal_mid_trial(proc, open_storage(storage), signal.SIGTERM)
    assert (proc.returncode, stderr.splitlines()[-1]) == (143, "terminated"), stderr
    assert took < grace_period_s()
    check_terminated(open_storage(storage), f"sqlite:///{tmp_path}/mlflow.db", stderr)


@pytest.mark.slow
def test_sigterm_to_the_launcher_reaches_every_worker_with_exit_143(tmp_path):
    """`run --workers 2` given SIGTERM forwards it: each worker's trial FAIL (terminated),
    the launcher exits 143 within the grace period with its summary line, no worker left."""
    study = study_file(tmp_path, "local-sigterm", n_trials=40, epochs=30, batch_size=16)
    parent = subprocess.Popen([*CLI, "run", str(study), "--workers", "2", "--no-tracking",
                               "--no-progress"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    storage = f"journal:{tmp_path}/tunetrack.journal"

    def running() -> list:
        try:
            study = optuna.load_study(study_name="local-sigterm", storage=open_storage(storage))
        except Exception:  # not created yet
            return []
        return [t for t in study.get_trials(deepcopy=False)
                if t.state.name == "RUNNING" and t.intermediate_values]

    try:
        deadline = time.monotonic() + 240
        while len(running()) < 2:  # both workers inside a trial
            assert parent.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        workers = children(parent.pid)
        sent = time.monotonic()
        parent.send_signal(signal.SIGTERM)  # only the launcher: it must forward
        output = parent.communicate(timeout=grace_period_s())[0]
        took = time.monotonic() - sent
    finally:
        stop(parent, signal.SIGKILL)
    assert parent.returncode == 143 and took < grace_period_s(), output
    assert "2 workers in" in output and "exit: 143, 143" in output, output
    assert "Traceback" not in output, output
    assert all(gone(pid) for pid in workers)
    trials = optuna.load_study(study_name="local-sigterm",
                               storage=open_storage(storage)).trials
    assert "RUNNING" not in {t.state.name for t in trials}
    stopped = [t for t in trials if t.state.name == "FAIL"]
    assert len(stopped) == 2
    assert {t.user_attrs["reason"] for t in stopped} == {"terminated (SIGTERM)"}


@pytest.mark.slow
def test_a_killed_tracking_helper_is_replaced_and_nothing_is_lost(tmp_path):
    """The helper is frozen while a trial completes (its record then waits, unanswered, in
    the study process) and killed: a new helper takes over, writes that record with its
    model, keeps the next trial's run (one run per trial), ends every run, and `promote`
    finds the best trial's model."""
    file = write_study(tmp_path, **{**LONG_TRIALS, "n_trials": 4,
                                    "tracking": {"enabled": True, "log_models": "all"}})
    proc = subprocess.Popen([*CLI, "run", str(file), "--no-progress"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    storage = f"sqlite:///{tmp_path}/tunetrack.db"
    try:
        wait_mid_trial(storage, "tiny", max_epochs=40, user_attr="mlflow_run_id")
        (helper,) = children(proc.pid)
        os.kill(helper, signal.SIGSTOP)
        deadline = time.monotonic() + 240
        while len(_complete(storage)) < 2:  # a trial completes while the helper is frozen
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(helper, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=600)
    finally:
        stop(proc, signal.SIGKILL)
    assert proc.returncode == 0, stderr
    assert "a new one took over" in stderr and "Traceback" not in stderr, stderr
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}
    by_trial = [r for r in runs if r.data.tags.get(T.ROLE) != T.ROLE_PARENT]
    assert sorted(int(r.data.tags[T.OPTUNA_TRIAL]) for r in by_trial) == [0, 1, 2, 3]
    assert all(T.MODEL_ID in r.data.tags for r in by_trial)  # log_models: all
    promoted = subprocess.run([*CLI, "promote", "tiny", "--model-name", "tiny-model"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert promoted.returncode == 0, promoted.stderr


def _complete(storage: str) -> list:
    study = optuna.load_study(study_name="tiny", storage=storage)
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


@pytest.mark.slow
def test_two_promotes_at_once_register_one_version_and_record_one_decision(tmp_path):
    """Two `tunetrack promote` started together: one promotes (version 1, one history
    entry), the other then finds the candidate already champion and records nothing."""
    from tunetrack.tracking import promotion_history

    file = write_study(tmp_path, n_trials=2, max_epochs=3, tracking={"enabled": True})
    ran = subprocess.run([*CLI, "run", str(file), "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    procs = [subprocess.Popen([*CLI, "promote", "tiny", "--model-name", "tiny-model"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    versions = MlflowClient(uri).search_model_versions("name = 'tiny-model'")
    assert [str(v.version) for v in versions] == ["1"], outputs
    assert len(promotion_history("tiny-model", tracking_uri=uri)) == 1, outputs
    assert sorted("already" in out for out in outputs) == [False, True], outputs
