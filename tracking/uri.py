"""Which MLflow store to talk to, and a fast check that it answers before any training.

MLflow 3.17 defaults to `sqlite:///mlflow.db` in the working directory, but silently falls
back to the `./mlruns` file store when that folder already holds runs; the file store has
no reliable model registry. tunetrack therefore always uses `sqlite:///<cwd>/mlflow.db`
when neither the caller nor `MLFLOW_TRACKING_URI` names a store, and makes relative
SQLite paths absolute so a later `chdir` cannot move the database.

Nothing here imports MLflow: the MLflow REST client retries a dead server with back-off
for minutes, so reachability is probed with plain `urllib` (and SQLAlchemy for databases).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tunetrack.models import TunetrackError
from tunetrack.models.errors import first_line

DEFAULT_DB_FILE = "mlflow.db"
_DB_SCHEMES = ("postgresql", "mysql", "mssql")
_SQLITE_MAGIC = b"SQLite format 3\x00"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: `uri`, else `MLFLOW_TRACKING_URI`, else `<cwd>/mlflow.db`.

    `mlflow.set_tracking_uri()` also sets `MLFLOW_TRACKING_URI`, so it is honoured too.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not chosen:
        return sqlite_uri(Path.cwd() / DEFAULT_DB_FILE)
    return _absolute(chosen.strip())


def sqlite_uri(path: str | Path) -> str:
    """`sqlite:///` URI of `path`, made absolute (four slashes on POSIX)."""
    return "sqlite:///" + Path(path).expanduser().absolute().as_posix()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for in-memory or other schemes)."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    if not raw or raw == ":memory:":
        return None
    path = Path(raw).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


_WAL_FILES: set[str] = set()


def use_wal(db: Path) -> None:
    """Open every later SQLite connection to `db` (in this process) in WAL mode with
    `synchronous=NORMAL`: readers (the MLflow UI, the dashboard, `tunetrack status`) no
    longer block the writer, and a commit costs one fsync less; a crash can lose the last
    commit, never corrupt the file. Registered on SQLAlchemy's pool class, so it also
    reaches engines that MLflow and Optuna create themselves."""
    import sqlalchemy

    if not _WAL_FILES:
        sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", _wal_pragmas)
    _WAL_FILES.add(str(db.resolve()))


def _wal_pragmas(connection, _record) -> None:
    import sqlite3

    if not isinstance(connection, sqlite3.Connection):
        return
    cursor = connection.cursor()
    try:
        rows = cursor.execute("PRAGMA database_list").fetchall()
        if any(row[2] and str(Path(row[2]).resolve()) in _WAL_FILES for row in rows):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def scheme_of(uri: str) -> str:
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].split("+", 1)[0].lower()


def redact(uri: str) -> str:
    """`uri` without a password, safe for error messages and logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _absolute(uri: str) -> str:
    scheme = scheme_of(uri)
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is None:
            return uri
        query = uri.split("?", 1)[1] if "?" in uri else ""
        return sqlite_uri(path) + (f"?{query}" if query else "")
    if scheme == "file" and "://" not in uri:
        return Path(uri).expanduser().absolute().as_uri()
    return uri


def check_reachable(uri: str, *, timeout: float = 5.0) -> None:
    """Raise `TunetrackError` (one line naming the URI) unless the store can be opened.

    HTTP servers get one GET of `/health` with `timeout` seconds; a refused connection
    fails at once. SQLite needs an existing, writable folder (and a real SQLite file if one
    is there); server databases get one connection attempt. Other schemes (databricks, ...)
    are left to MLflow.
    """
    scheme = scheme_of(uri)
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme == "file":
        _check_folder(Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path)), uri)
    elif scheme in _DB_SCHEMES:
        _check_database(uri, timeout)


def _check_http(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(64)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # the server is up and wants credentials; MLflow's client sends them
        raise TunetrackError(
            f"MLflow tracking server {redact(uri)} answered HTTP {exc.code} on /health; "
            f"is that URI an MLflow tracking server?"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TunetrackError(
            f"MLflow tracking server {redact(uri)} is not reachable ({reason}); start it "
            f"(mlflow server ...) or pass another tracking URI / set MLFLOW_TRACKING_URI"
        ) from None


def _check_sqlite(uri: str) -> None:
    path = sqlite_path(uri)
    if path is None:
        raise TunetrackError(f"tracking URI {uri} is an in-memory SQLite database; MLflow "
                             f"needs a file, e.g. sqlite:///mlflow.db")
    if path.exists():
        if path.is_dir():
            raise TunetrackError(f"tracking URI {uri}: {path} is a folder, not a database file")
        try:
            with path.open("rb") as handle:
                head = handle.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise TunetrackError(f"tracking URI {uri}: cannot read {path} ({exc})") from None
        if head and head != _SQLITE_MAGIC:
            raise TunetrackError(f"tracking URI {uri}: {path} is not an SQLite database")
        if not os.access(path, os.W_OK):
            raise TunetrackError(f"tracking URI {uri}: {path} is not writable")
        return
    _check_folder(path.parent, uri)


def _check_folder(folder: Path, uri: str) -> None:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # MLflow creates missing folders of a file store, not of SQLite
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise TunetrackError(f"tracking URI {uri}: folder {folder} does not exist or is not "
                             f"writable")
    if probe != folder and uri.startswith("sqlite:"):
        raise TunetrackError(f"tracking URI {uri}: folder {folder} does not exist; create it "
                             f"first")


def _check_database(uri: str, timeout: float) -> None:
    import sqlalchemy

    connect_args = {"connect_timeout": max(1, int(timeout))}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args, poolclass=(
            sqlalchemy.pool.NullPool))
        with engine.connect():
            pass
    except ModuleNotFoundError as exc:
        raise TunetrackError(f"tracking URI {redact(uri)} needs the database driver "
                             f"{exc.name!r}; pip install 'tunetrack[postgres]'") from None
    except Exception as exc:  # driver errors have no common base class
        raise TunetrackError(f"cannot connect to tracking database {redact(uri)}: "
                             f"{first_line(exc)}") from None
