"""SQLite files, for both stores (MLflow's `mlflow.db`, Optuna's `tunetrack.db`): their
paths, WAL mode, what a file holds (so the wrong store is refused before anything is
written) and a file lock between processes. search/storage.py and the tracking store both
use these; nothing here imports MLflow or Optuna.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from tunetrack.models import TunetrackError

SQLITE_MAGIC = b"SQLite format 3\x00"


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


def checkpoint_wal() -> None:
    """Fold the WAL of every SQLite file opened here in WAL mode back into the file.

    For processes that leave with `os._exit` (the `tunetrack` command, the tracking
    helper): without the interpreter's teardown no last connection closes, the `-wal`
    file stays beside the database, and a copy of the `.db` file alone would miss the
    study. Best effort: a file another process is using is checkpointed by its last user.
    """
    import sqlite3

    for path in sorted(_WAL_FILES):
        with (contextlib.suppress(sqlite3.Error),
              contextlib.closing(sqlite3.connect(path, timeout=5)) as connection):
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _wal_pragmas(connection, _record) -> None:
    import sqlite3

    if not isinstance(connection, sqlite3.Connection):
        return
    cursor = connection.cursor()
    try:
        rows = cursor.execute("PRAGMA database_list").fetchall()
        if any(row[2] and str(Path(row[2]).resolve()) in _WAL_FILES for row in rows):
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:  # a read-only file or folder: switching
                if "readonly" not in str(exc):     # modes writes, reading needs no WAL
                    raise
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


# ---- what a local SQLite file holds: refuse the wrong store, never log into a broken one --

_MLFLOW_MARKERS = frozenset({"experiments", "runs", "registered_models", "model_versions"})
_OPTUNA_MARKERS = frozenset({"studies", "version_info"})


def sqlite_tables(path: Path) -> tuple[frozenset[str], str | None] | None:
    """(table names, alembic revision) of the SQLite file `path`, read without writing a
    byte (an empty file has no tables); None when the file is not an SQLite database."""
    import sqlite3

    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    if not head:
        return frozenset(), None
    if head != SQLITE_MAGIC:
        return None
    connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        tables = frozenset(row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"))
        revision = None
        if "alembic_version" in tables:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None
    except sqlite3.DatabaseError as exc:
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and not os.access(path.parent, os.W_OK):
            raise TunetrackError(
                f"{shown_path(path)} cannot be read in place: its folder is read-only and "
                f"SQLite must write {path.name}-shm to read {wal.name}, the changes a process "
                f"that did not close it left behind; copy both files to a writable folder, "
                f"or open it once where it is writable") from None
        raise TunetrackError(f"{shown_path(path)} is not a readable SQLite database "
                             f"({exc})") from None
    finally:
        connection.close()
    return tables, revision


def store_kind(tables: frozenset[str]) -> str:
    """`empty`, `optuna` (a study storage), `mlflow` (a tracking store) or `other`."""
    if not tables:
        return "empty"
    if tables & _OPTUNA_MARKERS and "trials" in tables:
        return "optuna"
    if tables & _MLFLOW_MARKERS:
        return "mlflow"
    return "other"


def shown_path(path: Path) -> str:
    """`./mlflow.db` for a file under the working directory, else the absolute path."""
    try:
        return "./" + path.absolute().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def other_kind(path: Path, tables: frozenset[str]) -> str:
    """How to name what an SQLite file of the wrong kind holds, for error messages."""
    kind = store_kind(tables)
    if kind == "optuna":
        return f"{shown_path(path)} is a tunetrack/Optuna study storage"
    if kind == "mlflow":
        return f"{shown_path(path)} is an MLflow tracking store"
    listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    return f"{shown_path(path)} is an SQLite database of something else (tables {listed})"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock held while the block runs (`fcntl.flock` on
    `path`; released by the kernel if the process dies). No-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: no local multi-process creation race handled there
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
