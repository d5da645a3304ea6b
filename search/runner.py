"""Create-or-resume a study and run its trials: the Python API behind `tunetrack run`.

Order matters for "bad input leaves nothing behind": the study file, the device, the
tracking server and the dataset are all checked before the storage is opened, so a typo
never creates an empty study row or an orphan MLflow run.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from tunetrack.models.errors import TunetrackError

from .config import StudySpec
from .first_trial_seed import FirstTrialSeeded
from .optuna_internals import study_storage
from .optuna_warnings import quiet_experimental
from .progress import StudyProgress
from .resume import check_resume, remember
from .samplers import make_pruner, make_sampler, most_epochs
from .shared_study import clean_up_dead_trials, open_study_storage, rdb_storage
from .space import SearchSpace
from .stale_trials import OWNER_ATTR, record_owner
from .storage import open_storage, storage_file
from .study_file import load_study_file, parse_study
from .trial_budget import has_heartbeats
from .user_objects import with_objects

if TYPE_CHECKING:
    from .objective import Objective

TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def as_spec(spec: StudySpec | dict | str | Path, *, model: Any = None, dataset: Any = None,
            metric: Any = None) -> StudySpec:
    """A validated spec from a spec, a mapping (what a study file holds) or a file; `model`,
    `dataset` and `metric` objects (the Python API's) replace the spec's class paths."""
    if model is None and dataset is None and metric is None:
        if isinstance(spec, dict):
            return parse_study(spec, "<run_study spec>")
        return spec if isinstance(spec, StudySpec) else load_study_file(spec)
    raw = spec if isinstance(spec, dict) else as_spec(spec).model_dump(by_alias=True,
                                                                        exclude_none=True)
    return parse_study(with_objects(raw, model=model, dataset=dataset, metric=metric),
                       "<run_study spec>")


def check_budget(n_trials: int | None, timeout: float | None, *,
                 trials_flag: str = "--trials") -> None:
    """Refuse a trial count or time limit that cannot run, before anything is created."""
    if n_trials is not None and n_trials < 1:
        raise TunetrackError(f"{trials_flag} must be >= 1 but got {n_trials}")
    if timeout is not None and not timeout > 0:  # also NaN
        raise TunetrackError(f"--timeout must be > 0 seconds but got {timeout:g}")


def create_or_load(
    spec: StudySpec,
    space: SearchSpace,
    storage: optuna.storages.BaseStorage,
    seed_offset: int = 0,
) -> optuna.Study:
    """The study `spec.name`, created if new; an existing one only when the file still
    describes it (`resume.check_resume`; otherwise nothing is written).

    The sampler is built at this process's first trial, seeded with its number (see
    `first_trial_seed`), plus `seed_offset` for workers.
    """
    directions = [o.resolved_direction for o in spec.search.objective_list]
    check_resume(spec, space, storage)
    max_epochs = most_epochs(space)
    sampler = FirstTrialSeeded(
        lambda number: make_sampler(spec, space, offset=number + seed_offset))
    try:
        study = sampler.attach(optuna.create_study(
            study_name=spec.name,
            storage=storage,
            load_if_exists=True,
            directions=directions,
            sampler=sampler,
            pruner=make_pruner(spec.search.pruner, max_epochs),
        ))
    except ValueError as exc:
        raise TunetrackError(f"study {spec.name!r}: {exc}") from None
    remember(study, spec, space)
    _name_metrics(study, [o.metric for o in spec.search.objective_list])
    return study


def _name_metrics(study: optuna.Study, names: list[str]) -> None:
    """Optuna's dashboard and `trials_dataframe` show `val_accuracy`, not "Objective 0"."""
    if study.metric_names == names:
        return
    with quiet_experimental():  # set_metric_names is "experimental" in Optuna
        study.set_metric_names(names)


def _set_cpu_threads(device: Any, threads: int | None) -> None:
    """One torch thread per trial on CPU unless told otherwise.

    Digits-sized trials are bound by per-op overhead, not FLOPs: one thread trains an MLP
    epoch faster than two and does not collapse when another process shares the cores
    (bench/README.md). More cores are better spent on `--workers`; big CNNs on CPU can ask
    for `--threads`.
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
    spec: StudySpec | dict | str | Path,
    *,
    model: Any = None,
    dataset: Any = None,
    metric: Any = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
    callbacks: Sequence[TrialCallback] = (),
    max_total_trials: int | None = None,
    seed_offset: int = 0,
    threads: int | None = None,
    progress: bool | StudyProgress = False,
) -> optuna.Study:
    """Run `n_trials` more trials (default: the file's `search.n_trials`); returns the study.

    `model` (a callable returning an nn.Module), `dataset` (returning a Dataset or a
    {train, val, test} mapping) and `metric` (`fn(y_true, y_prob) -> float`) are the
    user's own objects, used with the spec's `init_args`; one with an import path is
    recorded by it, one without (a lambda, a notebook class) runs in this process only and
    `reproduce` says it cannot rebuild it.

    `progress=True` draws a bar of the trials and one of the running trial's epochs (in a
    notebook or a terminal; nothing in a log); a `StudyProgress` passed in is used as is.

    Re-running resumes: finished trials are kept and new ones are added. With
    `max_total_trials`, workers sharing one study stop once that many trials have finished
    between them (Optuna's `MaxTrialsCallback`). `seed_offset` shifts the sampler's seed:
    workers that share a study and start together must not draw the same trials.
    """
    spec = as_spec(spec, model=model, dataset=dataset, metric=metric)
    check_budget(n_trials, timeout)
    space = SearchSpace(spec)
    tracker = None
    if spec.tracking.enabled:
        from tunetrack.tracking.runs import StudyTracker, start_helper

        tracker = StudyTracker(
            study_name=spec.name,
            experiment=spec.tracking.experiment,
            tracking_uri=tracking_uri,
            log_models=spec.tracking.log_models,
            system_metrics=spec.tracking.system_metrics,
        )
        start_helper(tracker.tracking_uri)  # it imports MLflow while we import torch

    import torch

    from tunetrack.models import load_splits, resolve_device
    from tunetrack.models.user_code import UserCodeError

    from .objective import Objective
    from .startup_gc import resume as resume_gc

    dev = resolve_device(device or "auto")
    _set_cpu_threads(dev, threads)
    splits = load_splits(space.resolve({}).data)
    with _FullDisk(storage, spec.name):  # one line naming what filled up, and where
        backend = open_study_storage(storage, study_name=spec.name, tracking_uri=tracking_uri,
                                     track=spec.tracking.enabled)
        study = create_or_load(spec, space, backend, seed_offset)
        clean_up_dead_trials(study, tracking_uri=tracking_uri, track=spec.tracking.enabled)
        if tracker is not None:
            from tunetrack.tracking.store import check_mlflow_store

            check_mlflow_store(tracker.tracking_uri)  # a wrong file is refused before any trial
            tracker.start_study(study, wait=False)  # the helper creates the store and parent run
        n_trials = n_trials or spec.search.n_trials
        bar = StudyProgress(spec.name, n_trials) if progress is True else progress or None
        timeout = timeout or spec.search.timeout_s
        plain = Objective(spec, space, splits, dev, tracker, progress=bar,
                          deadline=time.monotonic() + timeout if timeout else None)
        optimize = _optimize(spec, study, plain)
        ending = "FINISHED"  # the parent run's status
        try:
            with bar if bar is not None else contextlib.nullcontext():
                optimize(
                    _owned(plain, study),
                    n_trials=n_trials,
                    timeout=timeout,
                    catch=(torch.cuda.OutOfMemoryError, UserCodeError),
                    callbacks=_trial_callbacks(bar, callbacks, max_total_trials),
                )
        except KeyboardInterrupt:
            ending = "KILLED"  # by Ctrl-C or SIGTERM: the study was stopped
            raise
        except Exception:
            ending = "FAILED"  # by an error (a full disk: `_FullDisk` says it in one line)
            raise
        finally:
            resume_gc()
            if tracker is not None:
                tracker.finish_study(study, status=ending)
        return study


class _FullDisk:
    """Around a study: a full disk under its storage (or wherever the study process
    writes) becomes one line saying what filled up, where, and what became of the study's
    trials (read back: a store on a full disk can still be read)."""

    def __init__(self, storage: str | optuna.storages.BaseStorage | None, name: str):
        self.storage, self.name = storage, name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        from tunetrack.tracking.runs import disk_full_line, full_path

        store = storage_file(self.storage)
        full = full_path(exc, store) if isinstance(exc, Exception) else None
        if full is None:
            return
        what = "study storage" if store is not None and Path(full) == store else "disk"
        raise TunetrackError(f"{disk_full_line(what, full)}; the study stopped (its finished "
                             f"trials are kept){self._left_running()}") from None

    def _left_running(self) -> str:
        """`; trial 7 left RUNNING (...)` for this process's trials the storage could not
        end; "" when none (or when the study cannot be read)."""
        try:
            study = optuna.load_study(study_name=self.name, storage=open_storage(self.storage,
                                                                             create=False))
            running = [t.number for t in study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) if _mine(t)]
        except Exception:  # nothing to add to the line
            return ""
        if not running:
            return ""
        return (f"; trial {', '.join(map(str, running))} left RUNNING (the next "
                f"`tunetrack run` or `tunetrack repair` fails it)")


def _mine(trial: optuna.trial.FrozenTrial) -> bool:
    """Does this process run `trial` (`stale_trials.record_owner`)?"""
    return trial.system_attrs.get(OWNER_ATTR, {}).get("pid") == os.getpid()


def _optimize(spec: StudySpec, study: optuna.Study, plain: Objective) -> Callable[..., None]:
    """`study.optimize`, or with `search.fuse: K` its fused twin, which trains K trials at a
    time as one model (search/fused_study.py) and marks each member's owner itself."""
    if spec.search.fuse > 1:
        from .fused_study import optimize_fused

        return partial(optimize_fused, study, plain, mark_owner=_owned(lambda trial: None, study))
    return study.optimize


def _trial_callbacks(bar: StudyProgress | None, callbacks: Sequence[TrialCallback],
                     max_total_trials: int | None) -> list[TrialCallback]:
    """After each trial: end the start-up GC pause, move the bar, the caller's callbacks,
    and with `max_total_trials` stop once the study has that many finished trials."""
    from .startup_gc import resume as resume_gc

    out: list[TrialCallback] = [lambda *_: resume_gc()] + ([bar] if bar is not None else [])
    out += list(callbacks)
    if max_total_trials is not None:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        out.append(optuna.study.MaxTrialsCallback(max_total_trials, states=states))
    return out


def _owned(objective: Callable[[optuna.Trial], Any], study: optuna.Study):
    """`objective` that first notes on its trial which process runs it, so a later command
    can tell that the trial's process died (`stale_trials.owner_died`)."""
    storage = rdb_storage(study_storage(study))
    grace = getattr(storage, "grace_period", None) if has_heartbeats(storage) else None

    def run_trial(trial: optuna.Trial) -> Any:
        record_owner(trial, grace)
        return objective(trial)

    return run_trial
