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
    "trial_rows",
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


def trial_rows(storage: optuna.storages.BaseStorage, study_id: int,
               attr_keys: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """Every trial of a study on an RDB storage without its params, system attributes or
    curves: trial id, number, state, start and completion times, values, the last reported
    value, and the user attributes `attr_keys`; None on other storages. Four queries over
    Optuna's tables through its ORM models (`optuna.storages._rdb.models`; 4.9 - 5.1).

    The times are the columns as stored (naive; Optuna 5 stores UTC and shows local time):
    what readers use of them, their order and differences, is the same.

    Why private: Optuna reads a trial whole or not at all (17 s for 10k trials of 20
    reports); `compare`'s ranking and cost-to-target need five fields of each."""
    import json

    import optuna
    import sqlalchemy as sa
    from optuna.storages._rdb import models as m

    backend = uncached_storage(storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return None
    trial, column = m.TrialModel, m.TrialModel.__table__.c
    of_study = sa.select(trial.trial_id).where(trial.study_id == study_id)
    inter = m.TrialIntermediateValueModel
    last_step = (sa.select(inter.trial_id, sa.func.max(inter.step).label("step"))
                 .where(inter.trial_id.in_(of_study)).group_by(inter.trial_id).subquery())
    with backend.engine.connect() as db:
        rows = {r.trial_id: {"trial_id": r.trial_id, "number": r.number, "state": r.state,
                             "datetime_start": r.datetime_start,
                             "datetime_complete": r.datetime_complete, "values": {},
                             "last_report": None, "user_attrs": {}}
                for r in db.execute(sa.select(trial.trial_id, trial.number, trial.state,
                                              column.datetime_start, column.datetime_complete)
                                    .where(trial.study_id == study_id))}
        value = m.TrialValueModel
        for r in db.execute(sa.select(value.trial_id, value.objective, value.value,
                                      value.value_type).where(value.trial_id.in_(of_study))):
            rows[r.trial_id]["values"][r.objective] = value.stored_repr_to_value(
                r.value, r.value_type)
        for r in db.execute(sa.select(inter.trial_id, inter.step, inter.intermediate_value,
                                      inter.intermediate_value_type)
                            .join(last_step, sa.and_(inter.trial_id == last_step.c.trial_id,
                                                     inter.step == last_step.c.step))):
            rows[r.trial_id]["last_report"] = (r.step, inter.stored_repr_to_intermediate_value(
                r.intermediate_value, r.intermediate_value_type))
        attr = m.TrialUserAttributeModel
        if attr_keys:
            for r in db.execute(sa.select(attr.trial_id, attr.key, attr.value_json)
                                .where(attr.trial_id.in_(of_study), attr.key.in_(attr_keys))):
                rows[r.trial_id]["user_attrs"][r.key] = json.loads(r.value_json)
    return sorted(rows.values(), key=lambda row: row["number"])
