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

from tunetrack.models.errors import TunetrackError
from tunetrack.tracking.uri import redact, sqlite_path, use_wal

DEFAULT_STORAGE = "sqlite:///tunetrack.db"
StaleTrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def open_storage(
    url: str | optuna.storages.BaseStorage | None = None,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    heartbeat_stale_trial_callback: StaleTrialCallback | None = None,
) -> optuna.storages.BaseStorage:
    """Open (creating where that is the storage's nature) the storage at `url`.

    Fails fast with one line naming the URL: a missing SQLite folder, a PostgreSQL server
    that refuses the connection or the credentials, an unknown scheme. An already open
    storage is returned as is, so a worker can open one with heartbeats and hand it on.
    Heartbeats exist only for RDB storages; JournalStorage ignores them.
    """
    if isinstance(url, optuna.storages.BaseStorage):
        return url
    url = url or DEFAULT_STORAGE
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        if not path.parent.is_dir():
            raise TunetrackError(f"storage {url}: folder {path.parent} does not exist")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    sqlite = sqlite_path(url)
    if sqlite is not None and not sqlite.parent.is_dir():
        raise TunetrackError(f"storage {url}: folder {sqlite.parent} does not exist")
    if "://" not in url:
        raise TunetrackError(
            f"storage {url!r} is not a URL; use sqlite:///FILE, "
            f"postgresql://USER:PASSWORD@HOST/DB or journal:FILE"
        )
    engine_kwargs = {"connect_args": {"connect_timeout": 5}} if url.startswith("postgres") else {}
    if sqlite is not None:
        use_wal(sqlite)  # a third of the cost of each per-epoch `trial.report`
    try:
        for attempt in range(_SCHEMA_RACE_ATTEMPTS):
            try:
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=heartbeat_stale_trial_callback,
                )
                return storage
            except Exception as exc:
                if attempt + 1 == _SCHEMA_RACE_ATTEMPTS or not _lost_schema_race(exc):
                    raise
                time.sleep(0.2 + random.random())  # the winner is creating the tables
        raise AssertionError("unreachable")
    except ImportError:  # e.g. postgresql:// on SQLAlchemy < 2.1, whose default is psycopg2
        raise TunetrackError(_missing_driver(url)) from None
    except Exception as exc:  # SQLAlchemy / driver errors carry multi-line messages
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TunetrackError(f"cannot open storage {redact(url)}: {first}") from None


_SCHEMA_RACE_ATTEMPTS = 4


def _missing_driver(url: str) -> str:
    """One line naming the DBAPI module SQLAlchemy wanted for `url` and how to get it."""
    from sqlalchemy.engine import make_url

    driver = make_url(url).get_dialect().driver
    hint = ("pip install -e '.[postgres]' (psycopg, with SQLAlchemy >= 2.1 for postgresql://)"
            if url.startswith("postgres") else f"install the {driver} driver")
    return f"cannot open storage {redact(url)}: database driver {driver!r} not installed; {hint}"


def _lost_schema_race(exc: Exception) -> bool:
    """Workers opening a fresh database at once all try to create Optuna's tables; the
    losers get "already exists" / duplicate-key errors and only need to open it again."""
    import sqlalchemy.exc

    if not isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)):
        return False
    text = str(exc).lower()
    return "already exists" in text or "duplicate key" in text
