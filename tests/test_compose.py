"""docker-compose.yml, Dockerfile and .env.example, checked without a Docker engine.

The file is parsed with `yaml.safe_load` (merge keys included) and `${VAR}` interpolated as
Compose does; commands are parsed by the real CLIs (tests/deploy_support.py), and the
worker command runs natively against the local PostgreSQL. `docker compose config` runs
where the Docker CLI has its compose plugin.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from .deploy_support import (
    Container,
    check_mlflow_server,
    check_no_secret_in_argv,
    check_worker,
    create_tables_natively,
    native_worker,
    run_workers_natively,
    serve_dashboard_natively,
)
from .scaleout_support import (
    PYTHON,
    load_study,
    mlflow_store,
    pg_url,  # noqa: F401  (fixture)
    stop,
    study_file,
    trial_runs,
)

REPO = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
ENV_EXAMPLE = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text()
                   .splitlines() if line and not line.startswith("#"))
_VAR = re.compile(r"(?<!\$)\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]
DOCKERFILE = (REPO / "Dockerfile").read_text()
ENTRYPOINT_SCRIPT = REPO / "deploy" / "docker" / "entrypoint.sh"
PASSWORD_SECRET = "postgres_password"
SECRET_PATH = f"/run/secrets/{PASSWORD_SECRET}"


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


def image_entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT (exec form): what runs every tunetrack service's command."""
    (line,) = re.findall(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE, re.M)
    return yaml.safe_load(line)


def container(service: str, env: dict[str, str] | None = None) -> Container:
    """The service as it would run with `env` as .env (default: none). PGPASSWORD counts as
    coming from a secret when the image's entrypoint reads it from PGPASSWORD_FILE and that
    file is a secret mounted into the service."""
    env = env or {}
    svc = SERVICES[service]
    raw_env = {k: interpolate(str(v), env) for k, v in (svc.get("environment") or {}).items()}
    mounted = {f"/run/secrets/{name}" for name in svc.get("secrets", [])}
    through_entrypoint = svc.get("build") == "." and "entrypoint" not in svc
    secret = ({"PGPASSWORD"} if through_entrypoint and raw_env.get("PGPASSWORD_FILE") in mounted
              else set())
    return Container(
        name=service,
        image=interpolate(svc["image"], env),
        command=[interpolate(str(part), env) for part in svc.get("command", [])],
        env=raw_env,
        secret_env=secret,
        ports=[int(str(p).rsplit(":", 1)[1]) for p in svc.get("ports", [])],
    )


def native(service: str, folder: Path) -> Container:
    """The service's container as a process here: through the image's entrypoint script,
    with its password secret a file in `folder` (the local server trusts any password)."""
    secret = folder / PASSWORD_SECRET
    secret.write_text("unused-with-trust-auth\n")
    c = container(service)
    assert c.env["PGPASSWORD_FILE"] == SECRET_PATH
    return replace(c, entrypoint=[str(ENTRYPOINT_SCRIPT)],
                   env={**c.env, "PGPASSWORD_FILE": str(secret)})


def published(service: str, env: dict[str, str] | None = None) -> list[str]:
    return [interpolate(str(p), env or {}) for p in SERVICES[service].get("ports", [])]


def test_the_services_exist():
    assert set(SERVICES) == {"postgres", "mlflow", "optuna-tables", "optuna-dashboard", "worker",
                             "worker-gpu"}


def test_postgres_image_volume_healthcheck_and_password_from_a_secret():
    pg = SERVICES["postgres"]
    assert re.fullmatch(r"postgres:15\.\d+", pg["image"])  # pinned to a minor release
    data = [v for v in pg["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert data and data[0].split(":")[0] in COMPOSE["volumes"]  # a named volume
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "POSTGRES_PASSWORD" not in pg["environment"]
    assert pg["environment"]["POSTGRES_PASSWORD_FILE"] == SECRET_PATH  # the image reads it
    assert PASSWORD_SECRET in pg["secrets"]
    (init_mount,) = [v for v in pg["volumes"] if "/docker-entrypoint-initdb.d" in v]
    init = REPO / init_mount.split(":")[0] / "10-mlflow-database.sh"
    assert init.is_file() and os.access(init, os.X_OK)
    assert "CREATE DATABASE" in init.read_text()  # MLflow gets its own database


def test_no_password_in_a_command_line_a_url_or_the_environment():
    for service in SERVICES:
        check_no_secret_in_argv(container(service))  # PGPASSWORD only from the secret file
        environment = SERVICES[service].get("environment") or {}
        assert not {"PGPASSWORD", "POSTGRES_PASSWORD"} & set(environment), service
    assert "PASSWORD:" not in COMPOSE_TEXT.replace("PASSWORD_FILE:", "")
    assert "PASSWORD}" not in COMPOSE_TEXT  # no `${...PASSWORD}` interpolated anywhere


def test_the_password_secret_is_a_git_ignored_file():
    (source,) = [v["file"] for k, v in COMPOSE["secrets"].items() if k == PASSWORD_SECRET]
    assert source == f"${{POSTGRES_PASSWORD_SECRET:-{ENV_EXAMPLE['POSTGRES_PASSWORD_SECRET']}}}"
    path = ENV_EXAMPLE["POSTGRES_PASSWORD_SECRET"]
    assert _git_ignored(path)  # never committed, never in the image's build context
    assert Path(path).parts[0] in (REPO / ".dockerignore").read_text().split()
    for name in ("mlflow", "optuna-tables", "optuna-dashboard", "worker", "worker-gpu"):
        assert PASSWORD_SECRET in SERVICES[name]["secrets"], name
        assert SERVICES[name]["environment"]["PGPASSWORD_FILE"] == SECRET_PATH, name


def test_the_entrypoint_reads_the_password_file_for_its_command(tmp_path):
    """deploy/docker/entrypoint.sh, the image's ENTRYPOINT: PGPASSWORD from the file (trailing
    newline dropped, as the postgres image does), the file's name not passed on."""
    assert image_entrypoint() == ["tunetrack-entrypoint"]
    assert re.search(r"^COPY --chmod=0755 deploy/docker/entrypoint\.sh "
                     r"/usr/local/bin/tunetrack-entrypoint$", DOCKERFILE, re.M)
    assert os.access(ENTRYPOINT_SCRIPT, os.X_OK)
    secret = tmp_path / "pw"
    secret.write_text("s3cret with spaces\n")
    show = [PYTHON, "-c", "import os, sys; print(repr(os.environ.get('PGPASSWORD')), "
            "'PGPASSWORD_FILE' in os.environ, sys.argv[1:])", "a b"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPASSWORD")}
    out = subprocess.run([str(ENTRYPOINT_SCRIPT), *show], capture_output=True, text=True,
                         env={**env, "PGPASSWORD_FILE": str(secret)}, check=True).stdout
    assert out.strip() == "'s3cret with spaces' False ['a b']"
    out = subprocess.run([str(ENTRYPOINT_SCRIPT), *show], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "None False ['a b']"  # no file: the command as it is
    missing = subprocess.run([str(ENTRYPOINT_SCRIPT), "true"], capture_output=True,
                             env={**env, "PGPASSWORD_FILE": str(tmp_path / "none")})
    assert missing.returncode != 0  # a missing secret stops the container, loudly


def test_every_port_is_loopback_and_set_in_env():
    ports = [(name, port) for name in SERVICES for port in published(name)]
    assert ports
    for name, port in ports:
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert "0.0.0.0:" not in COMPOSE_TEXT  # binds *inside* containers are fine
    # host ports come from .env; the defaults in the file are those of .env.example
    for service, var in (("mlflow", "MLFLOW_PORT"), ("optuna-dashboard", "DASHBOARD_PORT"),
                         ("postgres", "POSTGRES_PORT")):
        (port,) = published(service)
        assert port.split(":")[1] == ENV_EXAMPLE[var]
        (moved,) = published(service, {var: "15999"})
        assert moved.startswith("127.0.0.1:15999:")
    assert ENV_EXAMPLE["MLFLOW_PORT"] != "5000"  # macOS AirPlay
    assert ENV_EXAMPLE["POSTGRES_PORT"] != "5432"  # a PostgreSQL on the host


def test_every_variable_has_a_default_or_is_in_env_example():
    for name, op, _arg in _VAR.findall(COMPOSE_TEXT):
        assert name in ENV_EXAMPLE or op.endswith("-"), name
        if op.endswith("-") and name in ENV_EXAMPLE:
            defaults = {a for n, o, a in _VAR.findall(COMPOSE_TEXT) if n == name and o}
            assert defaults == {ENV_EXAMPLE[name]}, (name, defaults)


def test_mlflow_server_reads_its_database_from_the_environment():
    mlflow = SERVICES["mlflow"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    server = container("mlflow")
    assert "--backend-store-uri" not in server.command
    params = check_mlflow_server(server, db_host="postgres", port=5000)
    hosts = params["allowed_hosts"].split(",")
    assert "mlflow:5000" in hosts  # the workers' Host header
    assert f"127.0.0.1:{ENV_EXAMPLE['MLFLOW_PORT']}" in hosts  # the browser's, via .env
    volume, target = mlflow["volumes"][0].split(":")[:2]
    assert target == "/mlartifacts" and volume in COMPOSE["volumes"]
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])


def test_optuna_dashboard_reads_the_workers_database_and_has_a_healthcheck():
    dash = SERVICES["optuna-dashboard"]
    assert dash["depends_on"]["postgres"]["condition"] == "service_healthy"
    cmd = container("optuna-dashboard").command
    assert cmd[0] == "optuna-dashboard"
    assert cmd[1] == container("worker").env["TUNETRACK_STORAGE"]  # the workers' study
    # it cannot start on a database without Optuna's tables: a one-shot service makes them
    tables = dash["depends_on"]["optuna-tables"]["condition"]
    assert tables == "service_completed_successfully"
    assert container("optuna-tables").command[-1] == cmd[1]
    assert SERVICES["optuna-tables"]["restart"].startswith("on-failure")
    assert "PGPASSWORD" in container("optuna-dashboard").secret_env
    check = " ".join(dash["healthcheck"]["test"])
    assert "127.0.0.1:8080/api/studies" in check  # answers only when the database does


def test_image_services_run_under_init_and_the_same_image():
    for name in ("mlflow", "optuna-tables", "optuna-dashboard", "worker", "worker-gpu"):
        svc = SERVICES[name]
        assert svc["init"] is True, name  # signals reach the process; zombies reaped
        assert svc["build"] == "." and container(name).image == f"tunetrack:{VERSION}"
        assert "entrypoint" not in svc  # the image's: the password from its secret file
        assert svc["cap_drop"] == ["ALL"] and "cap_add" not in svc, name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert "user" not in svc  # the image's non-root user (Dockerfile USER)


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smh])", text))


def test_workers_stop_with_sigint_and_a_grace_period():
    for name in ("worker", "worker-gpu"):
        svc = SERVICES[name]
        assert svc["stop_signal"] == "SIGINT"  # the worker's KeyboardInterrupt path
        assert _seconds(interpolate(svc["stop_grace_period"])) >= 30
        assert "container_name" not in svc and "ports" not in svc  # --scale worker=N
        assert svc["depends_on"]["mlflow"]["condition"] == "service_healthy"
        assert svc["restart"].startswith("on-failure")  # exit 0 (study done) is final


def test_worker_command_parses_and_reads_storage_and_tracking_from_env():
    params = check_worker(container("worker"), storage_host="postgres",
                          tracking="http://mlflow:5000")
    assert params["file"].name == ENV_EXAMPLE["STUDY_FILE"]
    assert params["device"] is None  # auto: CPU in this service


def test_studies_data_and_weights_are_mounted_from_env():
    mounts = {v.rsplit(":", 2)[1]: v for v in SERVICES["worker"]["volumes"]}
    for target, var in (("/app/studies", "STUDIES_DIR"), ("/data", "DATA_DIR"),
                        ("/weights", "WEIGHTS_DIR")):
        assert mounts[target].startswith(f"${{{var}:-{ENV_EXAMPLE[var]}}}:")
        assert mounts[target].endswith(":ro")
    assert (REPO / ENV_EXAMPLE["STUDIES_DIR"] / ENV_EXAMPLE["STUDY_FILE"]).is_file()
    env = container("worker").env
    assert env["TUNETRACK_DATA"] == "/data" and env["TORCH_HOME"] == "/weights"


def test_gpu_workers_only_with_the_gpu_profile():
    assert "deploy" not in SERVICES["worker"] and "profiles" not in SERVICES["worker"]
    gpu = SERVICES["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]  # `docker compose up` on a CPU host never asks
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1
    params = check_worker(container("worker-gpu"), storage_host="postgres",
                          tracking="http://mlflow:5000")
    assert params["device"] == "cuda"


def test_env_example_has_no_password_and_env_is_ignored():
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD_SECRET"} <= set(ENV_EXAMPLE)
    assert not [k for k in ENV_EXAMPLE if k.endswith("PASSWORD")]  # a file holds it
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
    assert not (REPO / ".env").exists() or _git_ignored(".env")


def _git_ignored(path: str) -> bool:
    if shutil.which("git") is None:
        return True
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO,
                          check=False).returncode == 0


def test_dockerfile_installs_dependencies_before_copying_the_source():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    lines = text.splitlines()

    def first(pattern: str) -> int:
        return next(i for i, line in enumerate(lines) if re.search(pattern, line))

    deps = first(r"pip install -r ")
    assert first(r"^COPY pyproject\.toml") < deps < first(r"^COPY (models|search|tracking)\b")
    assert "optional-dependencies" in text and "EXTRAS" in text
    extras = re.search(r"^ARG EXTRAS=([a-z,]+)", text, re.M).group(1).split(",")
    assert {"postgres", "dashboard"} <= set(extras)  # the services' drivers and dashboard
    assert re.search(r'pip install --no-deps "\.\[\$EXTRAS\]"', text)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".env", ".venv", "data", "weights"} <= set(ignored)


def test_no_dangling_doc_references():
    for text in (COMPOSE_TEXT, (REPO / "Dockerfile").read_text()):
        for doc in re.findall(r"docs/[\w.-]+\.md", text):
            assert (REPO / doc).is_file(), doc


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["cpu", "gpu"])
def test_docker_compose_config_accepts_the_file(profile, tmp_path):
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed")
    secret = tmp_path / "pw"
    secret.write_text("unused\n")
    result = subprocess.run(["docker", "compose", *profile, "config", "--quiet"], cwd=REPO,
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "POSTGRES_PASSWORD_SECRET": str(secret)})
    assert result.returncode == 0, result.stderr


# ---- the worker command, run here against PostgreSQL ---------------------------------------


@pytest.mark.postgres
def test_two_compose_workers_share_one_study_natively(pg_url, tmp_path):  # noqa: F811
    worker = native("worker", tmp_path)
    run_workers_natively([worker, worker], pg_url=pg_url,
                         folder=tmp_path, name="compose-two")


@pytest.mark.postgres
def test_dashboard_command_answers_its_healthcheck_natively(pg_url, tmp_path):  # noqa: F811
    """The dashboard's command through the image's entrypoint (password from the secret
    file), serving the path its healthcheck asks for."""
    check = " ".join(SERVICES["optuna-dashboard"]["healthcheck"]["test"])
    path = re.search(r"127\.0\.0\.1:8080(/[\w/]+)", check)[1]
    create_tables_natively(native("optuna-tables", tmp_path), pg_url=pg_url, folder=tmp_path)
    serve_dashboard_natively(native("optuna-dashboard", tmp_path), pg_url=pg_url,
                             folder=tmp_path, probe_path=path)


@pytest.mark.postgres
def test_stop_signal_fails_the_running_trial_and_ends_its_run(pg_url, tmp_path):  # noqa: F811
    """`docker compose stop` sends the service's stop_signal (SIGINT): the worker must end
    within the grace period and leave no trial RUNNING and no MLflow run RUNNING."""
    study = study_file(tmp_path, "compose-stop", n_trials=20, epochs=300, batch_size=16)
    tracking = mlflow_store(tmp_path, "compose-stop")
    argv, env = native_worker(native("worker", tmp_path), storage=pg_url, tracking_uri=tracking,
                              study=study)
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not _running_with_run(pg_url, "compose-stop"):
            assert proc.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "worker.log").read_text())
            time.sleep(0.2)
        os.killpg(proc.pid, getattr(signal, SERVICES["worker"]["stop_signal"]))
        grace = _seconds(interpolate(SERVICES["worker"]["stop_grace_period"]))
        rc = proc.wait(grace)
    finally:
        stop(proc, signal.SIGKILL)
    assert rc == 130, (tmp_path / "worker.log").read_text()
    states = {t.state.name for t in load_study("compose-stop", pg_url).trials}
    assert "RUNNING" not in states and "FAIL" in states
    assert not [r for r in trial_runs(tracking, "compose-stop") if r.info.status == "RUNNING"]


def _running_with_run(storage: str, name: str) -> bool:
    try:
        trials = load_study(name, storage).get_trials(deepcopy=False)
    except KeyError:
        return False
    return any(t.state.name == "RUNNING" and t.intermediate_values
               and "mlflow_run_id" in t.user_attrs for t in trials)
