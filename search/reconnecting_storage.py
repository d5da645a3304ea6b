"""A study storage on a database server that outlives its connections.

A PostgreSQL server closes connections when it restarts, when an administrator (or an idle
timeout, a failover, a proxy) terminates them. Optuna's `RDBStorage` then fails the call,
and the study with it: the trial in flight FAIL, the remaining trials never run. Two
layers keep a study going:

- SQLAlchemy's `pool_pre_ping` tests a pooled connection before each use and replaces a
  dead one (`ENGINE_KWARGS`): a connection closed while idle costs nothing;
- a call cut off mid-way by a lost connection is tried again, a bounded number of times
  with a growing pause (`RETRY_PAUSES_S`, ~30 s in all: a server restart), and only for
  connection-level errors (`lost_connection`); a logic error (a duplicate key, a finished
  trial, an unknown study) is raised at once, as before.

A retried write whose first attempt committed before the connection dropped (the answer
lost, not the statement) is written twice: harmless for Optuna's writes, which set values,
except `create_new_trial`, which then leaves one extra RUNNING trial that no process owns
(rare: it needs the commit's answer, not the statement, to be lost).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna

_log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
RETRY_PAUSES_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # then the error is the study's
ENGINE_KWARGS = {"pool_pre_ping": True}
# RDBStorage's calls that reach the database (its helpers and version checks are not
# retried: they run at opening, where a refused connection is one clear error line)
_DATABASE_CALLS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "get_all_trials", "get_best_trial", "record_heartbeat",
    "_get_stale_trial_ids",
)


def lost_connection(exc: BaseException) -> bool:
    """Whether `exc` (or what Optuna wrapped in a `StorageInternalError`) means the
    connection to the database was lost or refused: SQLAlchemy's `OperationalError` and
    `InterfaceError`, or any DBAPI error that invalidated its connection. Never a logic
    error such as `IntegrityError`."""
    import sqlalchemy.exc

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sqlalchemy.exc.DBAPIError):
            return exc.connection_invalidated or isinstance(
                exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))
        if not isinstance(exc, optuna.exceptions.StorageInternalError):
            return False
        exc = exc.__cause__
    return False


def reconnecting(call: F) -> F:
    """`call`, tried again after a lost connection (see the module's note)."""

    @functools.wraps(call)
    def retried(*args: Any, **kwargs: Any) -> Any:
        for attempt, pause in enumerate((*RETRY_PAUSES_S, None)):
            try:
                return call(*args, **kwargs)
            except Exception as exc:
                if pause is None or not lost_connection(exc):
                    raise
                log = _log.warning if attempt == 0 else _log.info
                log("warning: the study database connection was lost in %s (%s); trying "
                    "again", call.__name__, _first_line(exc))
                time.sleep(pause)
        raise AssertionError("unreachable")

    return retried  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


class ReconnectingRDBStorage(optuna.storages.RDBStorage):
    """`RDBStorage` whose database calls survive a lost connection (module note)."""


for _name in _DATABASE_CALLS:
    setattr(ReconnectingRDBStorage, _name, reconnecting(getattr(optuna.storages.RDBStorage,
                                                                _name)))
