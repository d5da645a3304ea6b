"""Create-or-resume a study and run its trials: the Python API behind `tunetrack run`.

Order matters for "bad input leaves nothing behind": the study file, the device, the
tracking server and the dataset are all checked before the storage is opened, so a typo
never creates an empty study row or an orphan MLflow run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from tunetrack.models.errors import TunetrackError

from .config import StudySpec, load_study_file
from .samplers import make_pruner, make_sampler
from .space import SearchSpace
from .storage import open_storage

TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def as_spec(spec: StudySpec | str | Path) -> StudySpec:
    return spec if isinstance(spec, StudySpec) else load_study_file(spec)


def existing_trial_count(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    """Trials already in the study `name`, or None when there is no such study."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    return len(storage.get_all_trials(study_id, deepcopy=False))


def create_or_load(
    spec: StudySpec,
    space: SearchSpace,
    storage: optuna.storages.BaseStorage,
    seed_offset: int = 0,
    threads: int | None = None,
) -> optuna.Study:
    done = existing_trial_count(storage, spec.name) or 0
    directions = [o.resolved_direction for o in spec.search.objective_list]
    max_epochs = space.fixed.get("train.max_epochs", 100)
    try:
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            load_if_exists=True,
            directions=directions,
            sampler=make_sampler(spec, space, offset=done + seed_offset),
            pruner=make_pruner(spec.search.pruner, max_epochs),
        )
    except ValueError as exc:
        raise TunetrackError(f"study {spec.name!r}: {exc}") from None
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in directions]:
        raise TunetrackError(
            f"study {spec.name!r} exists with directions "
            f"{[d.name.lower() for d in study.directions]}, the file asks for "
            f"{directions}; use another study name"
        )
    study.set_user_attr("spec", json.loads(spec.model_dump_json(exclude_none=True)))
    return study


def _set_cpu_threads(device: Any, threads: int | None) -> None:
    """One torch thread per trial on CPU unless told otherwise.

    Digits-sized trials are bound by per-op overhead, not FLOPs: measured here, one thread
    trains an MLP epoch faster than two (0.18 s vs 0.28 s) and is immune to the 5-10x
    collapse two threads suffer when another process shares the cores. More cores are
    better spent on `--workers`; big CNNs on CPU can ask for `--threads`.
    """
    import os

    import torch

    if threads is None:
        if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
            return
        threads = 1
    if threads < 1:
        raise TunetrackError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def run_study(
    spec: StudySpec | str | Path,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
    callbacks: Sequence[TrialCallback] = (),
    max_total_trials: int | None = None,
    seed_offset: int = 0,
    threads: int | None = None,
) -> optuna.Study:
    """Run `n_trials` more trials (default: the file's `search.n_trials`); returns the study.

    Re-running resumes: finished trials are kept and new ones are added. With
    `max_total_trials`, workers sharing one study stop once that many trials have finished
    between them (Optuna's `MaxTrialsCallback`). `seed_offset` shifts the sampler's seed:
    workers that share a study and start together must not draw the same trials.
    """
    import torch

    from tunetrack.models import load_splits, resolve_device

    from .objective import Objective

    spec = as_spec(spec)
    space = SearchSpace(spec)
    dev = resolve_device(device or "auto")
    _set_cpu_threads(dev, threads)
    tracker = None
    if spec.tracking.enabled:
        from tunetrack.tracking import StudyTracker

        from .resilient_tracking import ResilientTracker

        tracker = StudyTracker(
            study_name=spec.name,
            experiment=spec.tracking.experiment,
            tracking_uri=tracking_uri,
            log_models=spec.tracking.log_models,
            system_metrics=spec.tracking.system_metrics,
        )
        tracker.check_reachable()
        tracker = ResilientTracker(tracker)  # MLflow failing mid-study: warn, keep training
        tracker.warm_up()  # the sidecar starts (with the wrapper's settings) as data loads
    splits = load_splits(space.resolve({}).data)
    study = create_or_load(spec, space, open_storage(storage), seed_offset)
    if tracker is not None:
        tracker.start_study(study)
    objective = Objective(spec, space, splits, dev, tracker)
    all_callbacks: list[Any] = list(callbacks)
    if max_total_trials is not None:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        all_callbacks.append(optuna.study.MaxTrialsCallback(max_total_trials, states=states))
    optimize = study.optimize
    if spec.search.fuse > 1:  # K trials at a time as one model (search/fused_study.py)
        from functools import partial

        from .fused_study import optimize_fused

        optimize = partial(optimize_fused, study)
    try:
        optimize(
            objective,
            n_trials=n_trials or spec.search.n_trials,
            timeout=timeout or spec.search.timeout_s,
            catch=(torch.cuda.OutOfMemoryError,),
            callbacks=all_callbacks,
        )
    finally:
        if tracker is not None:
            tracker.finish_study(study)
    return study
