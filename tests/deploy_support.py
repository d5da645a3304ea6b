"""Checks shared by the docker-compose and Kubernetes tests: a container is reduced to its
command and environment, which are parsed by the real CLIs (tunetrack's typer app,
MLflow's click group) and then run as processes on this host against the local
PostgreSQL, with the service names swapped for local stores.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import click
import typer

from .scaleout_support import (
    PYTHON,
    check_shared_study,
    load_study,
    mlflow_store,
    stop,
    study_file,
    wait_all,
)
from .support import free_port

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Container:
    """What a compose service or a Kubernetes container runs."""

    name: str
    image: str
    command: list[str]
    env: dict[str, str]  # literal values
    secret_env: set[str] = field(default_factory=set)  # names filled from a secret
    ports: list[int] = field(default_factory=list)  # ports the process listens on
    entrypoint: list[str] = field(default_factory=list)  # runs the command, when natively run


def parse_tunetrack(container: Container) -> tuple[str, dict]:
    """(subcommand, parameters) as tunetrack's CLI parses the container's command with its
    environment (options with `envvar` read it, as they would in the container)."""
    from tunetrack.search.cli import app

    argv = container.command
    assert argv[0] == "tunetrack", argv
    group = typer.main.get_command(app)
    with mock.patch.dict(os.environ, container.env, clear=False):
        ctx = group.make_context("tunetrack", argv[1:])
        sub = group.get_command(ctx, argv[1])
        return argv[1], sub.make_context(argv[1], argv[2:]).params


def parse_mlflow_server(container: Container) -> dict:
    """`mlflow server` parameters from the container's command and environment."""
    from mlflow.cli import cli

    argv = container.command
    assert argv[:2] == ["mlflow", "server"], argv
    with mock.patch.dict(os.environ, container.env, clear=False):
        ctx = cli.make_context("mlflow", argv[1:], resilient_parsing=False)
        command: click.Command = cli.get_command(ctx, "server")
        return command.make_context("server", argv[2:]).params


def check_no_secret_in_argv(container: Container) -> None:
    """Database URLs carry no password (libpq takes PGPASSWORD from the environment), and
    PGPASSWORD itself comes from a secret, not from the file."""
    for part in container.command:
        for url in (p for p in part.split(",") if "://" in p):
            assert urllib.parse.urlsplit(url).password is None, f"{container.name}: {url}"
    for name, value in container.env.items():
        if "://" in value:
            assert urllib.parse.urlsplit(value).password is None, f"{container.name}: {name}"
    if any(v.startswith("postgresql") for v in [*container.env.values(), *container.command]):
        assert "PGPASSWORD" in container.secret_env, f"{container.name}: no PGPASSWORD"
        assert "PGPASSWORD" not in container.env


def check_postgres_url(url: str, *, host: str, database: str) -> None:
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "postgresql", url  # the form Optuna's and MLflow's docs use
    assert (parts.hostname, parts.port or 5432, parts.path) == (host, 5432, f"/{database}")


def check_worker(container: Container, *, storage_host: str, tracking: str) -> dict:
    """A worker container: `tunetrack worker STUDY`, storage and tracking from the env."""
    sub, params = parse_tunetrack(container)
    assert sub == "worker"
    assert (REPO / params["file"]).is_file(), params["file"]
    check_postgres_url(params["storage"], host=storage_host, database="optuna")
    assert params["tracking_uri"] == tracking
    check_no_secret_in_argv(container)
    return params


def check_mlflow_server(container: Container, *, db_host: str, port: int) -> dict:
    params = parse_mlflow_server(container)
    check_postgres_url(params["backend_store_uri"], host=db_host, database="mlflow")
    assert params["artifacts_destination"] == "/mlartifacts"
    assert params["host"] == "0.0.0.0" and int(params["port"]) == port  # inside the pod only
    check_no_secret_in_argv(container)
    return params


def native_worker(container: Container, *, storage: str, tracking_uri: str, study: Path,
                  index: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The container's worker command and environment as a local process: the same argv
    after the study file, the same variables, with the service URLs pointing at this
    host's PostgreSQL database and MLflow store. A container whose entrypoint reads the
    password from PGPASSWORD_FILE gets it that way (the caller points it at a file)."""
    argv = container.command
    assert argv[:2] == ["tunetrack", "worker"], argv
    env = {**os.environ, **container.env, "TUNETRACK_STORAGE": storage,
           "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}
    if "PGPASSWORD_FILE" in container.env:
        env.pop("PGPASSWORD", None)
    else:
        env["PGPASSWORD"] = "unused-with-trust-auth"
    if index is not None:
        env["TUNETRACK_WORKER_INDEX"] = str(index)
    return [*container.entrypoint, PYTHON, "-m", "tunetrack.search.cli", "worker", str(study),
            *argv[3:]], env


def run_workers_natively(workers: list[Container], *, pg_url: str, folder: Path,
                         name: str, n_trials: int = 6, indexed: bool = False) -> None:
    """Start each container's worker command here on one small study and check that they
    shared it: the budget held and every trial has one ended MLflow run. `indexed`: worker
    i gets TUNETRACK_WORKER_INDEX=i, as a Kubernetes Indexed Job's pods do."""
    study = study_file(folder, name, n_trials=n_trials)
    tracking = mlflow_store(folder, name)
    procs = []
    for i, container in enumerate(workers):
        argv, env = native_worker(container, storage=pg_url, tracking_uri=tracking,
                                  study=study, index=i if indexed else None)
        log = (folder / f"{container.name}-{i}.log").open("wb")
        procs.append(subprocess.Popen(argv, env=env, cwd=folder, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    codes = wait_all(procs, timeout_s=300)
    logs = "".join(p.read_text() for p in folder.glob("*.log"))
    assert codes == [0] * len(workers), logs
    assert "database is locked" not in logs and "Traceback" not in logs
    try:
        check_shared_study(load_study(name, pg_url), n_trials, len(workers), tracking, name)
    except AssertionError as exc:  # the workers' own words say what happened
        raise AssertionError(f"{exc}\n--- the workers' logs ---\n{logs}") from exc


def _native_env(container: Container) -> dict[str, str]:
    env = {**os.environ, **container.env}
    if "PGPASSWORD_FILE" not in container.env:
        env["PGPASSWORD"] = "unused-with-trust-auth"
    return env


def create_tables_natively(container: Container, *, pg_url: str, folder: Path) -> None:
    """The container's `python -c ... URL` that makes Optuna's tables, run here on `pg_url`
    (through its entrypoint if it has one); twice, as a restarted pod or service would."""
    argv = list(container.command)
    assert argv[:2] == ["python", "-c"] and argv[-1].startswith("postgresql://"), argv
    argv[0], argv[-1] = PYTHON, pg_url
    for _ in range(2):
        subprocess.run([*container.entrypoint, *argv], env=_native_env(container), cwd=folder,
                       check=True, timeout=120)


def serve_dashboard_natively(container: Container, *, pg_url: str, folder: Path,
                             probe_path: str, timeout_s: float = 120) -> None:
    """Start the container's `optuna-dashboard` command here (this host's database, a free
    port on 127.0.0.1, through its entrypoint if it has one) and wait until `probe_path`,
    its readiness check, answers 200: the command, its flags and the probe agree."""
    argv = list(container.command)
    assert argv[0] == "optuna-dashboard", argv
    port = free_port()
    argv[0] = str(Path(PYTHON).parent / "optuna-dashboard")
    argv[1] = pg_url
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        argv[argv.index(flag) + 1] = value
    env = _native_env(container)
    log = folder / f"{container.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*container.entrypoint, *argv], env=env, cwd=folder, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{port}{probe_path}", timeout=3) as response:
                if response.status == 200:
                    return
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
    finally:
        stop(proc)
