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

import contextlib
import functools
import importlib.util
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tunetrack.models import TunetrackError
from tunetrack.models.errors import first_line

from . import sqlite
from .redaction import password_hint, redact
from .sqlite import sqlite_path, sqlite_uri

DEFAULT_DB_FILE = "mlflow.db"
_DB_SCHEMES = ("postgresql", "mysql", "mssql")


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: `uri`, else `MLFLOW_TRACKING_URI`, else `<cwd>/mlflow.db`.

    `mlflow.set_tracking_uri()` also sets `MLFLOW_TRACKING_URI`, so it is honoured too.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not chosen:
        return sqlite_uri(Path.cwd() / DEFAULT_DB_FILE)
    return _absolute(chosen.strip())


def scheme_of(uri: str) -> str:
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].split("+", 1)[0].lower()


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
                head = handle.read(len(sqlite.SQLITE_MAGIC))
        except OSError as exc:
            raise TunetrackError(f"tracking URI {uri}: cannot read {path} ({exc})") from None
        if head and head != sqlite.SQLITE_MAGIC:
            raise TunetrackError(f"tracking URI {uri}: {path} is not an SQLite database")
        if not os.access(path, os.W_OK):
            raise TunetrackError(f"tracking URI {uri}: {path} is not writable")
        check_mlflow_store(uri)
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
        with engine.connect() as connection:
            tables = frozenset(sqlalchemy.inspect(connection).get_table_names())
            revision = None
            if "alembic_version" in tables:
                revision = connection.execute(sqlalchemy.text(
                    "SELECT version_num FROM alembic_version")).scalar()
    except ModuleNotFoundError as exc:
        raise TunetrackError(f"tracking URI {redact(uri)} needs the database driver "
                             f"{exc.name!r}; pip install -e '.[postgres]'") from None
    except Exception as exc:  # driver errors have no common base class
        why = redact(first_line(exc))  # a driver may quote the URL it was given
        raise TunetrackError(f"cannot connect to tracking database {redact(uri)}: "
                             f"{why}{password_hint(why)}") from None
    if sqlite.store_kind(tables) == "optuna":  # other programs' tables may share a server database
        raise TunetrackError(f"tracking URI {redact(uri)}: the database is a tunetrack/Optuna "
                             f"study storage, not an MLflow store")
    if sqlite.store_kind(tables) == "mlflow":
        _check_schema(tables, revision, f"the database {redact(uri)}", uri)


_MLFLOW_CORE = frozenset({"experiments", "runs", "metrics", "params", "tags", "alembic_version",
                          "registered_models", "model_versions"})


@functools.lru_cache(maxsize=1)
def mlflow_schema_head() -> str | None:
    """The schema revision this MLflow creates, read from its migration scripts' text
    (alembic's own loader imports all of them: seconds); None when MLflow is missing."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    versions = Path(spec.submodule_search_locations[0]) / "store" / "db_migrations" / "versions"
    revisions, parents = set(), set()
    for script in versions.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        revisions.update(re.findall(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.M))
        parents.update(re.findall(r"['\"](\w+)['\"]", "".join(
            re.findall(r"^down_revision\s*=\s*(.+)$", text, re.M))))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def check_mlflow_store(uri: str, *, must_exist: bool = False) -> None:
    """Raise `TunetrackError` (one line) unless the local SQLite store at `uri` is usable.

    Refused: a file that is not SQLite, an Optuna study storage or another program's
    database (MLflow would add its tables to it), and a half-created MLflow store (tables
    missing, or a schema revision other than this MLflow's: a migration that was
    interrupted, e.g. by a full disk; MLflow would fail on every call while the study
    trains on untracked). With `must_exist` (read-only commands) a missing or empty file
    is refused too, instead of being created. Servers and other schemes check their own
    schema; nothing is checked for them here.
    """
    path = sqlite_path(uri)
    if path is None or (path.exists() and path.is_dir()):
        return
    read = sqlite.sqlite_tables(path) if path.exists() else (frozenset(), None)
    if read is None:
        raise TunetrackError(f"tracking URI {uri}: {path} is not an SQLite database")
    tables, revision = read
    kind = sqlite.store_kind(tables)
    if kind == "empty":
        if must_exist:
            raise TunetrackError(f"no MLflow store at {sqlite.shown_path(path)}; run "
                                 f"`tunetrack run FILE` first, or pass --tracking-uri / set "
                                 f"MLFLOW_TRACKING_URI to the store the study logged to")
        return
    if kind != "mlflow":
        raise TunetrackError(f"tracking URI {uri}: {sqlite.other_kind(path, tables)}, not an "
                             f"MLflow store; point --tracking-uri at the MLflow store (default "
                             f"sqlite:///mlflow.db)")
    _check_schema(tables, revision, sqlite.shown_path(path), uri)


def _check_schema(tables: frozenset[str], revision: str | None, where: str, uri: str) -> None:
    """Refuse an MLflow store whose core tables or schema revision are not this MLflow's."""
    head, missing = mlflow_schema_head(), sorted(_MLFLOW_CORE - tables)
    if missing or (head is not None and revision != head):
        found = f"tables {', '.join(missing)} missing" if missing else (
            f"schema revision {revision}, this MLflow needs {head}")
        raise TunetrackError(
            f"{where} is a half-created MLflow store ({found}): delete it or "
            f"point --tracking-uri elsewhere (a complete store of an older MLflow: "
            f"mlflow db upgrade {redact(uri)})")


def ensure_local_store(uri: str) -> None:
    """Create the local SQLite MLflow store at `uri` if it is not there yet, exactly once.

    Processes starting together must not both run MLflow's migrations on one new file (one
    dies with an alembic error), and a creation cut short must not leave a half-migrated
    store behind. So the store is migrated in a temporary file beside it and renamed into
    place (atomic), under an exclusive lock file `.<db>.lock`: whoever comes second finds the
    finished store. An existing store is checked (`check_mlflow_store`), never migrated.
    Other schemes: nothing to do (a server migrates its own database).
    """
    path = sqlite_path(uri)
    if path is None:
        return
    check_mlflow_store(uri)
    if path.exists() and path.stat().st_size:
        return
    with sqlite.file_lock(path.with_name(f".{path.name}.lock")):
        check_mlflow_store(uri)
        if path.exists() and path.stat().st_size:
            return  # another process created it while we waited
        tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
        try:
            _migrate(tmp, default_artifacts=path.parent / "mlruns")
            os.replace(tmp, path)
        finally:
            for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-wal", "-shm"))):
                leftover.unlink(missing_ok=True)


def _migrate(db: Path, *, default_artifacts: Path) -> None:
    """MLflow's own schema set-up (tables, migrations, the Default experiment) in `db`,
    then every connection closed so the file is complete on its own (no -wal file)."""
    import logging
    import sqlite3

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.unlink(missing_ok=True)
    chatty = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow ..."
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        store = SqlAlchemyStore(sqlite_uri(db), default_artifacts.absolute().as_uri())
    finally:
        chatty.setLevel(level)
    store.engine.dispose()
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
