"""Resuming a study is safe: the file must still describe the study that was created.

A study's trials are comparable only while the search space, the fixed settings that
shape a trial and the objective stay what they were: a changed range mixes incomparable
values into `best`, a changed `log` flag makes Optuna reject the parameter mid-trial.
So the study remembers, at creation, a *signature*: one line per searched parameter
(range, log/step, choices, `when`), per fixed setting, the data split and the objectives.
A rerun whose file gives another signature stops before anything is written, with one
line naming the first differences and how to start a new study.

Not part of the signature (a rerun may change them): the budget (`search.n_trials`,
`timeout_s`), sampler and pruner, tracking and registry options, and where things are
(`dataset.path`, `dataset.root`, `model.weights`) or how they run (`train.device`,
`compile`, `stream`, `eval_batch_size`).
"""

from __future__ import annotations

import json
from typing import Any

import optuna

from tunetrack.models.errors import TunetrackError

from .config import StudySpec
from .optuna_internals import study_id as optuna_study_id
from .optuna_internals import study_storage
from .space import SearchSpace

SIGNATURE_ATTR = "tunetrack.signature"  # study system attr: {key: [canonical, description]}
SPEC_ATTR = "spec"  # study user attr: the spec the study was created with
_WHERE_OR_HOW = frozenset({"dataset.path", "dataset.root", "model.weights", "train.device",
                           "train.compile", "train.stream", "train.eval_batch_size"})
_SHOWN = 3  # differences named in the error line


def signature(spec: StudySpec, space: SearchSpace | None = None) -> dict[str, list[str]]:
    """{key: [canonical form, description]} of everything that makes two trials of the
    study comparable. The canonical form (JSON of the values) is what is compared, so a
    change in how tunetrack words a range never refuses a study; the description is what
    an error shows."""
    space = space or SearchSpace(spec)
    out = {"seed": _entry(spec.seed, str(spec.seed))}
    for key, value in spec.dataset.model_dump(exclude_none=True).items():
        out[f"dataset.{key}"] = _entry(value, str(value))
    for dim in space.dimensions:
        p = dim.param
        bounds = {"choice": getattr(p, "choice", None), "int": getattr(p, "int_", None),
                  "float": getattr(p, "float_", None)}
        when = [[path, list(allowed)] for path, allowed in dim.when]
        condition = " and ".join(f"{path} in {list(allowed)}" for path, allowed in dim.when)
        out[dim.path] = _entry(
            {**bounds, "log": getattr(p, "log", False), "step": getattr(p, "step", None),
             "when": when},
            dim.describe() + (f" when {condition}" if condition else ""))
    for path, value in space.fixed.items():
        out[path] = _entry(value, f"fixed {value}")
    objectives = [[o.resolved_direction, o.metric] for o in spec.search.objective_list]
    out["objective"] = _entry(objectives, ", ".join(" ".join(o) for o in objectives))
    return {k: v for k, v in out.items() if k not in _WHERE_OR_HOW}


def _entry(value: Any, description: str) -> list[str]:
    return [json.dumps(value, sort_keys=True, default=str), description]


def check_resume(spec: StudySpec, space: SearchSpace,
                 storage: optuna.storages.BaseStorage) -> bool:
    """Raise `TunetrackError` when the study `spec.name` exists with another signature;
    return whether it exists. Reads only."""
    try:
        study_id = storage.get_study_id_from_name(spec.name)
    except KeyError:
        return False
    now = signature(spec, space)
    stored = storage.get_study_system_attrs(study_id).get(SIGNATURE_ATTR)
    if stored is None:  # created before signatures: compare what it did store
        stored = _legacy_signature(storage, study_id, now)
    changes = [_change(key, stored.get(key, [None, None])[1], now.get(key, [None, None])[1])
               for key in sorted(set(stored) | set(now), key=_order(stored, now))
               if stored.get(key, [None])[0] != now.get(key, [None])[0]]
    if changes:
        more = f" (and {len(changes) - _SHOWN} more)" if len(changes) > _SHOWN else ""
        raise TunetrackError(
            f"study {spec.name!r} was created with {'; '.join(changes[:_SHOWN])}{more}: its "
            f"trials would not be comparable; rename `name:` in the file or delete the study "
            f"(optuna delete-study --study-name {spec.name} --storage URL) to start over")
    return True


def remember(study: optuna.Study, spec: StudySpec, space: SearchSpace) -> None:
    """Store the spec and signature of a study this process created (or that predates
    signatures); a study that has them keeps the ones it was created with."""
    storage, study_id = study_storage(study), optuna_study_id(study)
    if SIGNATURE_ATTR not in storage.get_study_system_attrs(study_id):
        storage.set_study_system_attr(study_id, SIGNATURE_ATTR, signature(spec, space))
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, json.loads(
            spec.model_dump_json(exclude_none=True, by_alias=True)))


def _change(key: str, was: str | None, now: str | None) -> str:
    if was is None:
        return f"no {key}; the file now sets {key} {now}"
    if now is None:
        return f"{key} {was}; the file now has no {key}"
    return f"{key} {was}; the file now says {now}"


def _order(stored: dict[str, list[str]], now: dict[str, list[str]]):
    keys = [*stored, *(k for k in now if k not in stored)]
    return keys.index


def _legacy_signature(storage: optuna.storages.BaseStorage, study_id: int,
                      now: dict[str, list[str]]) -> dict[str, list[str]]:
    """A study from before signatures: its stored spec's signature when it still parses,
    else its directions only (all that Optuna itself kept)."""
    stored_spec = storage.get_study_user_attrs(study_id).get(SPEC_ATTR)
    if isinstance(stored_spec, dict):
        try:
            return signature(StudySpec.model_validate(_aliased(stored_spec)))
        except Exception:  # a spec older than today's schema: fall back to directions
            pass
    directions = [d.name.lower() for d in storage.get_study_directions(study_id)]
    if directions == [o[0] for o in json.loads(now["objective"][0])]:
        return now
    return {**now, "objective": ["directions " + ", ".join(directions),
                                 "directions " + ", ".join(directions)]}


def _aliased(value):
    """Specs stored before `by_alias=True` spell `int` / `float` as `int_` / `float_`."""
    if isinstance(value, dict):
        return {k.removesuffix("_") if k in ("int_", "float_") else k: _aliased(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_aliased(v) for v in value]
    return value
