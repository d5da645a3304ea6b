"""One promotion of a registered model at a time.

A promotion reads the champion, judges, then registers a version, moves the alias and
appends to the history: two `tunetrack promote` at once both read "no champion", both
register the same run and both record a decision. Held around read-judge-write, a lock
makes the second one see the first one's result ("already the champion, nothing to do").
The registry itself offers no compare-and-set, so the lock is taken where the store lives:
a lock file beside a local SQLite store (every process on this host), a PostgreSQL
advisory lock for a `postgresql://` store (every host). An `http(s)://` MLflow server
offers neither; there, promotions from several hosts at once are not serialised.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

from ..store import file_lock, sqlite_path


@contextlib.contextmanager
def promotion_lock(tracking_uri: str, model_name: str) -> Iterator[None]:
    """Hold the lock of `model_name`'s promotions in the store at `tracking_uri`."""
    key = hashlib.blake2b(f"tunetrack.promote:{model_name}".encode(), digest_size=7)
    db = sqlite_path(tracking_uri)
    if db is not None:
        with file_lock(db.parent / f".{db.name}.promote-{key.hexdigest()}.lock"):
            yield
    elif tracking_uri.startswith(("postgresql", "postgres:")):
        with _advisory_lock(tracking_uri, int.from_bytes(key.digest(), "big")):
            yield
    else:
        yield


@contextlib.contextmanager
def _advisory_lock(url: str, key: int) -> Iterator[None]:
    """A session-level PostgreSQL advisory lock on its own connection (released when the
    connection closes, also when this process dies)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()
