"""A full disk under a store, told apart from other failures and said in one line.

A store that runs out of space fails in many voices: `OSError: [Errno 28] No space left
on device` from an artifact copy, SQLite's "database or disk is full" wrapped in
SQLAlchemy's and then MLflow's or Optuna's exceptions (Optuna's even blames "invalid data
in the commit"). The study process (the Optuna storage) and the tracking helper (the MLflow
store and its artifacts) both ask `full_path` the same question and say the answer with
`disk_full_line`: what filled up, where, and how much room is left there.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = "database or disk is full"  # SQLITE_FULL, whatever wraps it


def full_path(exc: BaseException, store: str | Path | None) -> str | None:
    """Where the disk filled up when `exc`, or an exception behind it, says it did: the
    file named by the OSError, else `store` (the SQLite file or journal being written),
    else "" (full, but nobody said where); None for any other failure."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _FULL_ERRNOS:
            named = cause.filename2 or cause.filename
            return str(named or store or "")
        if _SQLITE_FULL in str(cause):
            return str(store or "")
        cause = cause.__cause__ or cause.__context__
    return None


def disk_full_line(what: str, path: str) -> str:
    """`{what} full: no space left on device for {path} ({free} left there)`."""
    if not path:
        return f"{what} full: no space left on device"
    return f"{what} full: no space left on device for {path}{_room_left(path)}"


def _room_left(path: str) -> str:
    """` (12 KB left there)`: the free space of the nearest existing folder of `path`."""
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" ({_size(free)} left there)"


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            break
    return f"{n:.0f} {unit}"
