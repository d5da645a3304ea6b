"""`tunetrack server`: the MLflow tracking server that scaled-out workers log to.

A thin wrapper, on purpose: it checks what a typo would otherwise turn into a stack trace
minutes later (the backend database answers, the artifact folder can be made), binds to
127.0.0.1 unless told otherwise, and then *replaces itself* with `mlflow server` (exec), so
signals, logs and exit codes are MLflow's own. Anything after `--` goes to MLflow as is
(e.g. `-- --allowed-hosts mlflow.internal:5000`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

from tunetrack.models.errors import TunetrackError

_log = logging.getLogger(__name__)


def mlflow_server_argv(
    *,
    backend_store_uri: str,
    artifacts_destination: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 2,
    extra: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The `python -m mlflow server ...` command line (the current interpreter's MLflow)."""
    if not 0 < port < 65536:
        raise TunetrackError(f"--port must be in 1..65535, got {port}")
    if workers < 1:
        raise TunetrackError(f"--workers must be >= 1, got {workers}")
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", _artifact_uri(artifacts_destination),
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
        *extra,
    ]


def _artifact_uri(destination: str) -> str:
    """A local folder becomes an absolute path (made if missing); URIs (s3://...) stay."""
    if "://" in destination:
        return destination
    folder = Path(destination).expanduser().absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunetrackError(f"--artifacts-destination {destination}: {exc}") from None
    if not os.access(folder, os.W_OK):
        raise TunetrackError(f"--artifacts-destination {folder} is not writable")
    return str(folder)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(argv: list[str], *, backend_store_uri: str, host: str) -> None:
    """Check the backend store, then exec `mlflow server` (never returns on success)."""
    from .uri import check_reachable

    check_reachable(backend_store_uri)
    if not is_loopback(host):
        _log.warning(
            "warning: MLflow listens on %s without authentication; anyone who can reach "
            "that address can read and delete runs. Prefer 127.0.0.1 and an SSH tunnel "
            "or a reverse proxy with auth.", host,
        )
    sys.stdout.flush()
    os.execv(argv[0], argv)
