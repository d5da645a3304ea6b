"""Every private Optuna name tunetrack uses, one function each.

Optuna's public API has no way to reach a study's storage, a study's or trial's storage
id, the RDBStorage under its per-study cache, or the heartbeat thread of a trial that
`study.optimize` did not start; tunetrack needs all of them (signatures in study system
attributes, retrying dead workers' trials, fused trials). Private names can change in any
release, so they live here and nowhere else: `tests/test_optuna_internals.py` exercises each
function against the installed Optuna, and an upgrade that breaks one fails the test named
after it instead of a worker in the middle of a study. pyproject.toml bounds Optuna to the
major versions these were checked on (docs/dependencies.md).

Checked on Optuna 4.9.0 (read from its wheel) and 5.1.0 (installed, tests run).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

__all__ = [
    "OPTIMIZE_LOGGER",
    "heartbeat_thread",
    "optimize_logger",
    "study_id",
    "study_storage",
    "trial_id",
    "trial_state_counts",
    "uncached_storage",
]

# The logger `study.optimize` warns through ("Trial N failed with ..."): a module path.
OPTIMIZE_LOGGER = "optuna.study._optimize"


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage the study reads and writes (`Study._storage`; 4.9 - 5.1).

    Why private: `Study` exposes no storage; `optuna.load_study(storage=URL)` would open a
    second engine, and the one behind `study` is the one its trials and cache live in."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (`Study._study_id`; 4.9 - 5.1).

    Why private: the storage's study system attributes (where tunetrack keeps the study's
    signature) are keyed by this id; `Study.system_attrs` is read-only and deprecated, and
    `storage.get_study_id_from_name` costs a query for what the study already holds."""
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The trial's id in its storage (`Trial._trial_id`, `FrozenTrial._trial_id`; 4.9 - 5.1).

    Why private: `BaseStorage.set_trial_*` and `get_trial` take this id, not the trial
    number, and neither class has a public accessor for it."""
    return trial._trial_id


def uncached_storage(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The RDBStorage under Optuna's per-process cache, or `storage` itself when it is not
    cached (`_CachedStorage._backend`; 4.9 - 5.1).

    Why private: `optuna.create_study` wraps an RDBStorage in `_CachedStorage`, which
    forwards the heartbeat methods but not the `grace_period` attribute that tunetrack
    reads and raises (a reader must not judge a worker by a shorter grace period than the
    one the worker asked for)."""
    return getattr(storage, "_backend", storage)


def heartbeat_thread(trial: optuna.Trial) -> AbstractContextManager[Any]:
    """Optuna's heartbeat for `trial`, as a context manager: entered, it records the
    trial's heartbeat every `heartbeat_interval` seconds until exited; a do-nothing one on
    storages without heartbeats (`optuna.storages._heartbeat.get_heartbeat_thread`;
    4.9 - 5.1).

    Why private: only `study.optimize` starts heartbeats, for the trial it asked; a fused
    group's other members are asked by tunetrack and would otherwise look dead to every
    other worker after the grace period."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial_id(trial), study_storage(trial.study))


def optimize_logger() -> logging.Logger:
    """The logger `study.optimize` warns through when a trial fails (module
    `optuna.study._optimize`; 4.9 - 5.1).

    Why private: Optuna has no option to silence the "Trial N failed" warnings of one
    cause (a Ctrl-C); a filter on this logger drops them, and its name is a private module's."""
    return logging.getLogger(OPTIMIZE_LOGGER)


def trial_state_counts(storage: optuna.storages.BaseStorage, study_id: int
                       ) -> dict[str, int] | None:
    """{state name: trials} of a study on an RDB storage by one SQL count over Optuna's
    `trials` table (its schema: `study_id`, `state` holding the state's name; 4.9 - 5.1);
    None on other storages.

    Why private: `get_n_trials(study_id, state)` builds every trial of that state to count
    them (16 s at 10k trials); the table is Optuna's schema, not an API."""
    import optuna
    import sqlalchemy

    backend = uncached_storage(storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return None
    engine = backend.engine
    query = sqlalchemy.text("SELECT state, COUNT(*) FROM trials WHERE study_id = :study "
                            "GROUP BY state")
    with engine.connect() as connection:
        rows = connection.execute(query, {"study": study_id}).all()
    return {str(getattr(state, "name", state)): int(n) for state, n in rows}
