"""Opening Optuna storages with errors a user can act on.

SQLite is the one-command default; PostgreSQL (or any SQLAlchemy URL) scales out; a
`journal:` path selects Optuna's file-based JournalStorage, the safe choice for several
local worker processes (SQLite locks under concurrent writers).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from tunetrack.models.errors import TunetrackError, first_line
from tunetrack.tracking.store import (
    SQLITE_MAGIC,
    other_kind,
    password_hint,
    redact,
    shown_path,
    sqlite_path,
    sqlite_tables,
    store_kind,
    use_wal,
)

from .reconnecting_storage import ENGINE_KWARGS, ReconnectingRDBStorage

DEFAULT_STORAGE = "sqlite:///tunetrack.db"
# where `run --workers N` keeps a study given no --storage: SQLite locks under parallel
# writers (search/workers.py), so the reading commands look here too
PARALLEL_DEFAULT_STORAGE = "journal:tunetrack.journal"
StaleTrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def open_storage(
    url: str | optuna.storages.BaseStorage | None = None,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    heartbeat_stale_trial_callback: StaleTrialCallback | None = None,
    create: bool = True,
) -> optuna.storages.BaseStorage:
    """Open (creating where that is the storage's nature) the storage at `url`.

    Fails fast with one line naming the URL: a missing SQLite folder, a PostgreSQL server
    that refuses the connection or the credentials, an unknown scheme, a file or database
    that holds something else (an MLflow store: Optuna would add its tables to it). With
    `create=False` (commands that only read) a storage that is not there yet is an error
    instead of a new empty file. An already open storage is returned as is, so a worker
    can open one with heartbeats and hand it on. Heartbeats exist only for RDB storages;
    JournalStorage ignores them.
    """
    if isinstance(url, optuna.storages.BaseStorage):
        return url
    url = url or DEFAULT_STORAGE
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        _check_file_place(path, url, f"journal:{path / 'tunetrack.journal'}")
        _check_journal(path, url, create)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    sqlite = sqlite_path(url)
    if sqlite is not None:
        _check_file_place(sqlite, url, f"sqlite:///{sqlite / 'tunetrack.db'}")
        _check_sqlite_file(sqlite, url, create)
    if "://" not in url:
        raise TunetrackError(
            f"storage {redact(url)!r} is not a URL; use sqlite:///FILE, "
            f"postgresql://USER@HOST/DB (the password in PGPASSWORD) or journal:FILE"
        )
    engine_kwargs = {"connect_args": {"connect_timeout": 5}} if url.startswith("postgres") else {}
    if sqlite is None:  # a server: its connections may drop (reconnecting_storage.py)
        engine_kwargs.update(ENGINE_KWARGS)
    if sqlite is not None:
        use_wal(sqlite)  # a third of the cost of each per-epoch `trial.report`
    try:
        for attempt in range(_SCHEMA_RACE_ATTEMPTS):
            try:
                if sqlite is None:
                    _check_database(url, engine_kwargs, create)
                rdb = optuna.storages.RDBStorage if sqlite else ReconnectingRDBStorage
                storage = rdb(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=heartbeat_stale_trial_callback,
                )
                return storage
            except TunetrackError:
                raise
            except Exception as exc:
                if attempt + 1 == _SCHEMA_RACE_ATTEMPTS or not _lost_schema_race(exc):
                    raise
                time.sleep(0.2 + random.random())  # the winner is creating the tables
        raise AssertionError("unreachable")
    except ImportError:  # e.g. postgresql:// on SQLAlchemy < 2.1, whose default is psycopg2
        raise TunetrackError(_missing_driver(url)) from None
    except Exception as exc:  # SQLAlchemy / driver errors carry multi-line messages
        why = redact(first_line(exc))  # SQLAlchemy may quote the URL it was given
        raise TunetrackError(
            f"cannot open storage {redact(url)}: {why}{password_hint(why)}") from None


_SCHEMA_RACE_ATTEMPTS = 4


def _missing_driver(url: str) -> str:
    """One line naming the DBAPI module SQLAlchemy wanted for `url` and how to get it."""
    from sqlalchemy.engine import make_url

    driver = make_url(url).get_dialect().driver
    hint = ("pip install -e '.[postgres]' (psycopg, with SQLAlchemy >= 2.1 for postgresql://)"
            if url.startswith("postgres") else f"install the {driver} driver")
    return f"cannot open storage {redact(url)}: database driver {driver!r} not installed; {hint}"


def _lost_schema_race(exc: Exception) -> bool:
    """Processes opening a fresh database at once (workers, or two `run`s started together
    on the default SQLite file) all try to create Optuna's tables; the losers get "already
    exists" / duplicate-key errors (SQLite: "table ... already exists", "UNIQUE constraint
    failed: alembic_version...", or "database is locked" where a reader's transaction
    could not become a writer) and only need to open it again."""
    import sqlalchemy.exc

    if not isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                            sqlalchemy.exc.OperationalError)):
        return False
    text = str(exc).lower()
    return any(sign in text for sign in ("already exists", "duplicate key", "database is locked",
                                         "unique constraint failed: alembic_version"))


def storage_file(storage: str | optuna.storages.BaseStorage | None) -> Path | None:
    """The local file a storage writes (SQLite or journal), to name it when its disk is
    full; None for a server database."""
    if isinstance(storage, optuna.storages.BaseStorage):
        from .optuna_internals import uncached_storage

        storage = getattr(uncached_storage(storage), "url", None)
        if storage is None:
            return None
    url = storage or DEFAULT_STORAGE
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    return sqlite_path(url)


def missing_store(where: str) -> TunetrackError:
    return TunetrackError(f"no study store at {where}; run `tunetrack run FILE` first (or "
                          f"pass --storage / set TUNETRACK_STORAGE to where the study is)")


def _wrong_kind(url: str, what: str) -> TunetrackError:
    return TunetrackError(f"storage {redact(url)}: {what}, not a study storage; pass --storage "
                          f"{DEFAULT_STORAGE} (the default) or another Optuna storage")


def _check_file_place(path: Path, url: str, example: str) -> None:
    """A storage file's folder must exist and the name must not be a folder itself (both
    would otherwise surface as an OS error deep inside SQLite or the journal backend)."""
    if not path.parent.is_dir():
        raise TunetrackError(f"storage {url}: folder {path.parent} does not exist")
    if path.exists() and not path.is_file():
        raise TunetrackError(f"storage {url}: {path} is a folder, not a file; name a file in "
                             f"it, e.g. {example}")


def _check_sqlite_file(path: Path, url: str, create: bool) -> None:
    """Refuse what Optuna would otherwise silently turn into a study storage."""
    read = sqlite_tables(path) if path.exists() else (frozenset(), None)
    if read is None:
        raise _wrong_kind(url, f"{shown_path(path)} is not an SQLite database")
    kind = store_kind(read[0])
    if kind == "empty" and not create:
        raise missing_store(shown_path(path))
    if kind not in ("empty", "optuna"):
        raise _wrong_kind(url, other_kind(path, read[0]))


def _check_journal(path: Path, url: str, create: bool) -> None:
    if not path.exists() or not path.stat().st_size:
        if not create:
            raise missing_store(str(path))
        return
    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    if head == SQLITE_MAGIC:
        raise _wrong_kind(url, f"{path} is an SQLite database, not an Optuna journal "
                               f"(use sqlite:///{path} if it is a study storage)")


def _check_database(url: str, engine_kwargs: dict, create: bool) -> None:
    """A server database: refuse MLflow's (both keep an `alembic_version` table, so they
    cannot share one); with `create=False`, also one without Optuna's tables. Other
    programs' tables are allowed beside Optuna's in a server database."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs)
    try:
        tables = frozenset(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    kind = store_kind(tables)
    if kind != "optuna" and not create:
        raise missing_store(redact(url))
    if kind == "mlflow":
        raise _wrong_kind(url, "the database is an MLflow tracking store")


def read_storage(study: str | None) -> tuple[str | None, str | None]:
    """The store a reading command opens when given no --storage, and a line saying so
    when it is not the default.

    `run` keeps studies in ./tunetrack.db, `run --workers N` in ./tunetrack.journal; a
    user who ran either types `tunetrack status NAME` and expects to see the study. The
    default SQLite file wins when it holds the study (or, for `studies`, exists); else the
    journal file when it exists. Neither is created or changed.
    """
    journal = Path(PARALLEL_DEFAULT_STORAGE.removeprefix("journal:"))
    if not journal.is_file() or not journal.stat().st_size:
        return None, None
    sqlite = sqlite_path(DEFAULT_STORAGE)
    if sqlite is not None and sqlite.is_file() and (study is None or _holds(sqlite, study)):
        note = None if study is not None else (
            f"note: {PARALLEL_DEFAULT_STORAGE} (run --workers) holds studies too; "
            f"--storage {PARALLEL_DEFAULT_STORAGE} lists them")
        return None, note
    return PARALLEL_DEFAULT_STORAGE, (f"reading {PARALLEL_DEFAULT_STORAGE}, the store of "
                                      f"run --workers (--storage to choose another)")


def _holds(path: Path, study: str) -> bool:
    """Whether the SQLite study store at `path` has `study`, read-only (no -wal created)."""
    import sqlite3

    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT 1 FROM studies WHERE study_name = ?",
                                (study,)).fetchone() is not None
    except sqlite3.Error:
        return True  # not a readable study store: let open_storage say what it is
