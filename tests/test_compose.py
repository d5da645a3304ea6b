"""docker-compose.yml, Dockerfile and .env.example, checked without a Docker engine.

The file is parsed with `yaml.safe_load`; commands are parsed by the real CLIs (tunetrack's
typer app, MLflow's click group) so a renamed option fails here, not on a GPU host. The
worker command also runs natively against PostgreSQL in test_scaleout_postgres.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` against `env`."""
    env = env or {}

    def sub(match: re.Match) -> str:
        name, op, arg = match.groups()
        if name in env:
            return env[name]
        if op and op.endswith("-"):
            return arg
        if op and op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return ""

    return _VAR.sub(sub, text)


def command_of(service: str) -> list[str]:
    env = {"POSTGRES_PASSWORD": "pw-from-env"}
    return [interpolate(str(part), env) for part in SERVICES[service]["command"]]


def test_the_four_services_exist():
    assert set(SERVICES) == {"postgres", "mlflow", "optuna-dashboard", "worker"}


def test_postgres_image_volume_healthcheck_and_credentials_from_env():
    pg = SERVICES["postgres"]
    assert pg["image"] == "postgres:15"
    data = [v for v in pg["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert data and data[0].split(":")[0] in COMPOSE["volumes"]  # a named volume
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    init = REPO / "docker" / "postgres-init" / "10-mlflow-database.sh"
    assert init.is_file() and os.access(init, os.X_OK)
    assert "CREATE DATABASE" in init.read_text()  # MLflow gets its own database


def test_no_literal_passwords_anywhere():
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(COMPOSE_TEXT)  # compose refuses to start without the variable
    for url in re.findall(r"[a-z+]+://[^\s\"']+", COMPOSE_TEXT):
        if "@" in url:
            credentials = url.split("://", 1)[1].rsplit("@", 1)[0]
            assert "${POSTGRES_PASSWORD" in credentials and "${POSTGRES_USER" in credentials
    assert "PASSWORD=" not in COMPOSE_TEXT.replace("POSTGRES_PASSWORD=", "")


def test_every_published_port_is_bound_to_loopback():
    published = [(name, port) for name, svc in SERVICES.items() for port in svc.get("ports", [])]
    assert published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert "0.0.0.0:" not in COMPOSE_TEXT  # binds *inside* containers are fine


def test_mlflow_server_uses_postgres_and_an_artifact_volume():
    mlflow = SERVICES["mlflow"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    cmd = command_of("mlflow")
    assert cmd[:2] == ["mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith(
        "postgresql+psycopg://tunetrack:pw-from-env@postgres:5432/")
    assert cmd[cmd.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "mlflow:5000" in cmd[cmd.index("--allowed-hosts") + 1]  # workers' Host header
    volume, target = mlflow["volumes"][0].split(":")[:2]
    assert target == "/mlartifacts" and volume in COMPOSE["volumes"]
    assert mlflow["ports"] == ["127.0.0.1:5000:5000"]
    assert "healthcheck" in mlflow


def test_mlflow_server_command_parses_with_mlflow_cli():
    from mlflow.cli import cli

    cmd = command_of("mlflow")
    ctx = cli.make_context("mlflow", cmd[1:], resilient_parsing=False)
    sub_ctx = cli.get_command(ctx, "server").make_context("server", cmd[2:])
    assert sub_ctx.params["artifacts_destination"] == "/mlartifacts"


def test_optuna_dashboard_reads_the_optuna_database():
    dash = SERVICES["optuna-dashboard"]
    assert dash["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert dash["ports"] == ["127.0.0.1:8080:8080"]
    cmd = command_of("optuna-dashboard")
    assert cmd[0] == "optuna-dashboard"
    assert cmd[1] == "postgresql+psycopg://tunetrack:pw-from-env@postgres:5432/optuna"
    worker_storage = command_of("worker")[command_of("worker").index("--storage") + 1]
    assert cmd[1] == worker_storage  # the dashboard shows the study the workers write


def test_worker_is_scalable_with_one_gpu_each():
    worker = SERVICES["worker"]
    assert worker["build"] == "."
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["mlflow"]["condition"] == "service_healthy"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1
    assert device["capabilities"] == ["gpu"]


def test_worker_command_parses_with_the_tunetrack_cli():
    import typer

    from tunetrack.search.cli import app

    cmd = command_of("worker")
    assert cmd[:3] == ["tunetrack", "worker", "studies/digits.yaml"]
    assert (REPO / cmd[2]).is_file()
    assert cmd[cmd.index("--tracking-uri") + 1] == "http://mlflow:5000"
    group = typer.main.get_command(app)
    ctx = group.make_context("tunetrack", cmd[1:])
    params = group.get_command(ctx, "worker").make_context("worker", cmd[2:]).params
    assert params["storage"].startswith("postgresql+psycopg://")
    assert params["tracking_uri"] == "http://mlflow:5000"


def test_env_example_has_placeholders_and_env_is_ignored():
    example = (REPO / ".env.example").read_text()
    values = dict(line.split("=", 1) for line in example.splitlines()
                  if line and not line.startswith("#"))
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD"} <= set(values)
    assert "replace" in values["POSTGRES_PASSWORD"]  # a placeholder, not a secret
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
    assert not (REPO / ".env").exists() or _git_ignored(".env")


def _git_ignored(path: str) -> bool:
    if shutil.which("git") is None:
        return True
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO,
                          check=False).returncode == 0


def test_dockerfile_slim_python_postgres_extra_non_root():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    install = re.search(r'pip install "?\.\[([a-z,]+)\]', text)
    assert install and "postgres" in install.group(1).split(",")
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "tunetrack" in (REPO / "pyproject.toml").read_text()  # console script for `command`
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".venv" in ignored  # no secrets or venv in the image


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_docker_compose_config_accepts_the_file():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed")
    result = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=REPO,
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "POSTGRES_PASSWORD": "pw-from-env"})
    assert result.returncode == 0, result.stderr
