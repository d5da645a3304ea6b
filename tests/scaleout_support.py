"""Shared pieces of the scale-out tests: a throw-away PostgreSQL database per test, a real
`mlflow server`, tiny study files and worker processes.

Imported by the `test_scaleout_*` modules.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .support import free_port

PG_ADMIN_URL = os.environ.get("TUNETRACK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PYTHON = sys.executable
WORKER = [PYTHON, "-m", "tunetrack.search.cli", "worker"]


def study_file(folder: Path, name: str, *, epochs: int = 2, n_trials: int = 6,
               samples: int = 600, batch_size: int = 64, sampler: str = "tpe") -> Path:
    """A study whose trials take about a second: digits subset, one-layer MLP."""
    spec = {
        "name": name,
        "seed": 0,
        "dataset": {"name": "digits", "val_fraction": 0.2, "test_fraction": 0.2,
                    "max_samples": samples},
        "model": {"family": "mlp", "depth": 1, "width": {"int": [16, 64], "log": True}},
        "train": {"max_epochs": epochs, "batch_size": batch_size,
                  "lr": {"float": [1.0e-3, 1.0e-1], "log": True}},
        "search": {"metric": "val_accuracy", "sampler": sampler, "n_startup_trials": 3,
                   "pruner": {"type": "none"}, "n_trials": n_trials},
        "tracking": {"log_models": "none"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ---- PostgreSQL ---------------------------------------------------------------------------


def _admin():
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {str(exc).splitlines()[0]}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh database `tunetrack_test_<random>`, dropped after the test."""
    name = f"tunetrack_test_{secrets.token_hex(4)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- processes ----------------------------------------------------------------------------


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 20) -> None:
    """Signal a process started with start_new_session=True (and its children), then reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 and a free port, SQLite backend, one web worker."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = folder / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None
        self.argv: list[str] | None = None  # another `mlflow server` command (with self.port)
        self.env: dict[str, str] | None = None  # ... and environment

    def start(self, timeout_s: float = 180) -> MlflowServer:
        argv = self.argv or [
            PYTHON, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow-server.db'}",
            "--artifacts-destination", str(self.folder / "mlartifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True, cwd=self.folder)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                f"{self.uri}/health", timeout=2
            ) as response:
                if response.status == 200:
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not up after {timeout_s} s: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def start_worker(study: Path, storage: str, *extra: str, cwd: Path,
                 env: dict[str, str] | None = None, log_name: str = "worker") -> subprocess.Popen:
    """`python -m tunetrack.search.cli worker STUDY --storage URL ...`; output to a log file."""
    log = (cwd / f"{log_name}.log").open("ab")
    return subprocess.Popen([*WORKER, str(study), "--storage", storage, *extra],
                            stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                            start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def wait_all(procs: list[subprocess.Popen], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            stop(proc, signal.SIGKILL)
        raise
    return [p.returncode for p in procs]


# ---- what the stores hold -----------------------------------------------------------------


def load_study(name: str, storage: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def trial_runs(tracking_uri: str, experiment: str) -> list:
    """Every child (trial) run of the experiment, deleted ones excluded."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([exp.experiment_id],
                              filter_string="tags.`tunetrack.role` = 'trial'",
                              max_results=1000)


def finished(study) -> list:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


# ---- one study shared by several workers ------------------------------------------------

STATE_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def mlflow_store(folder: Path, experiment: str) -> str:
    """A local SQLite MLflow store with the experiment made (as `run --workers` does), so
    parallel workers do not race to create MLflow's schema."""
    from tunetrack.tracking.store import client_for, get_or_create_experiment

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    get_or_create_experiment(client_for(uri), experiment, uri)
    return uri


def check_shared_study(study, total: int, workers: int, tracking_uri: str,
                       experiment: str) -> None:
    """The budget held across workers and each trial has exactly one, ended, MLflow run."""
    from optuna.trial import TrialState as STATE

    done = finished(study)
    # MaxTrialsCallback + SharedTrialBudget: the budget is met; the only possible extra
    # trials are ones started in the same instant by other workers (in practice: none)
    assert total <= len(done) <= total + workers - 1, [t.state for t in study.trials]
    assert len({t.number for t in done}) == len(done)
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == len(params), "two workers sampled the same trial"
    assert not study.get_trials(states=(STATE.RUNNING, STATE.WAITING))
    runs = trial_runs(tracking_uri, experiment)
    by_trial: dict[int, list] = {}
    for run in runs:
        by_trial.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    numbers = sorted(t.number for t in study.trials)
    assert sorted(by_trial) == numbers, (  # what to look at when it fails
        f"trials {[(t.number, t.state.name) for t in study.trials]} but runs for "
        f"{ {n: [r.info.status for r in rs] for n, rs in sorted(by_trial.items())} }")
    for trial in study.trials:
        (run,) = by_trial[trial.number]  # exactly one run per trial
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.info.status == STATE_RUN_STATUS[trial.state.name]
