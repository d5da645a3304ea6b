"""`StudyTracker`: one MLflow experiment per study, one shared parent run, a child per trial.

Layout decision: the parent run is **shared** by all worker processes of a study. It is
found by its tags (`tunetrack.study`, `tunetrack.role=parent`) and remembered in the
study's user attribute `mlflow_parent_run_id`. Find-or-create runs under a lock (threads;
processes too for a local SQLite store); workers of a remote store that still race each
create a parent, re-query (twice, 0.5 s apart), keep the earliest and delete their own
duplicate, so the UI shows one tree per study however many workers joined.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrack.models import TunetrackError
from tunetrack.models.errors import unknown

from . import tags as T
from .compare import direction_sign
from .uri import check_reachable, file_lock, resolve_tracking_uri, sqlite_path

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from tunetrack.models import TrialConfig

    from .trial_run import TrialRun

_log = logging.getLogger(__name__)
LOG_MODEL_POLICIES = ("all", "best", "none")
PARENT_SETTLE_S = 0.5  # remote stores: second look for a rival parent run after this
_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
SYSTEM_METRICS_INTERVAL_S = 10.0


def _better(a: float, b: float, direction: str) -> bool:
    sign = direction_sign(direction)
    return sign * a < sign * b


def _dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True when `a` is at least as good as `b` everywhere and better somewhere."""
    no_worse = all(not _better(y, x, d) for x, y, d in zip(a, b, directions, strict=True))
    return no_worse and any(_better(x, y, d) for x, y, d in zip(a, b, directions, strict=True))


class StudyTracker:
    """Logs an Optuna study to MLflow through `MlflowClient` and explicit run ids only.

    Args:
        study_name: Optuna study name; tags every run.
        experiment: MLflow experiment name (default: `study_name`).
        tracking_uri: store; default `MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db`.
        log_models: `all` (every completed trial), `best` (the best trial's; with one
            objective the model of this process's best trial is logged when the study's
            tracking is drained, see `trial_tasks.log_completed`; with several, every
            trial that joins the Pareto front) or `none`.
        system_metrics: also log CPU/GPU/memory use per trial (needs `psutil`).
    """

    def __init__(self, *, study_name: str, experiment: str | None = None,
                 tracking_uri: str | None = None, log_models: str = "best",
                 system_metrics: bool = False):
        if not study_name or not study_name.strip():
            raise TunetrackError("study_name must be a non-empty string")
        if log_models not in LOG_MODEL_POLICIES:
            raise unknown("tracking.log_models", log_models, LOG_MODEL_POLICIES)
        if system_metrics and importlib.util.find_spec("psutil") is None:
            raise TunetrackError("tracking.system_metrics needs psutil: pip install psutil")
        self.study_name = study_name
        self.experiment_name = experiment or study_name
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.log_models = log_models
        self.system_metrics = system_metrics
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._warm: Any = None  # Future of the sidecar's warm-up
        self._single_objective = True

    def __repr__(self) -> str:
        return (f"StudyTracker(study={self.study_name!r}, experiment={self.experiment_name!r}, "
                f"tracking_uri={self.tracking_uri!r})")

    @property
    def client(self) -> MlflowClient:
        from .client import client_for

        return client_for(self.tracking_uri)

    def check_reachable(self) -> None:
        """Raise TunetrackError (naming the URI) unless the store answers; a few seconds."""
        check_reachable(self.tracking_uri)

    def warm_up(self) -> None:
        """Start the sidecar process now (it imports MLflow, torch, matplotlib), so it is ready
        by the time the first trial's run is needed; costs the caller nothing."""
        from . import trial_tasks
        from .sidecar import SIDECAR

        if self._warm is None:
            self._warm = SIDECAR.submit(trial_tasks.warm_up)

    # ---- parent run -------------------------------------------------------------------

    def start_study(self, study: optuna.Study) -> str:
        """Get or create the experiment and the study's one parent run; return its id."""
        from .client import get_or_create_experiment

        client = self.client
        self.experiment_id = get_or_create_experiment(client, self.experiment_name,
                                                      self.tracking_uri)
        remembered = study.user_attrs.get(T.ATTR_PARENT_RUN_ID)
        parent = self._usable_parent(remembered) if remembered else None
        if parent is None:
            with self._parent_lock():
                found = self._find_parents()
                parent = found[0] if found else self._create_parent(study)
        if parent != remembered:
            study.set_user_attr(T.ATTR_PARENT_RUN_ID, parent)
        if client.get_run(parent).info.status != "RUNNING":
            client.update_run(parent, status="RUNNING")  # a resumed study is live again
        self.parent_run_id = parent
        self._single_objective = len(study.directions) == 1
        self.warm_up()
        return parent

    def _usable_parent(self, run_id: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None  # e.g. the study outlived its mlflow.db
        ok = (run.info.experiment_id == self.experiment_id
              and run.info.lifecycle_stage == "active"
              and run.data.tags.get(T.STUDY) == self.study_name
              and run.data.tags.get(T.ROLE) == T.ROLE_PARENT)
        return run_id if ok else None

    def _find_parents(self) -> list[str]:
        """Active parent runs of this study, earliest first (the study tag is compared here,
        not in the filter, so any study name works without quoting rules)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{T.ROLE}` = '{T.ROLE_PARENT}'",
            max_results=1000)
        mine = [r for r in runs if r.data.tags.get(T.STUDY) == self.study_name]
        mine.sort(key=lambda r: (r.info.start_time, r.info.run_id))
        return [r.info.run_id for r in mine]

    @contextlib.contextmanager
    def _parent_lock(self) -> Iterator[None]:
        """Serialise find-or-create of the parent between threads and, for a local SQLite
        store, between processes (a lock file beside the artifacts); remote stores rely on
        the re-check in `_create_parent`."""
        key = (self.tracking_uri, self.experiment_name, self.study_name)
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault(key, threading.Lock())
        with lock:
            db = sqlite_path(self.tracking_uri)
            if db is None:
                yield
                return
            import hashlib

            name = hashlib.blake2b(repr(key).encode(), digest_size=6).hexdigest()
            path = db.parent / "mlruns" / f".parent-{name}.lock"
            path.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(path):
                yield

    def _create_parent(self, study: optuna.Study) -> str:
        client = self.client
        directions = ",".join(d.name for d in study.directions)
        run = client.create_run(self.experiment_id, run_name=self.study_name, tags={
            T.STUDY: self.study_name, T.ROLE: T.ROLE_PARENT, T.OPTUNA_STUDY: self.study_name,
            T.OPTUNA_DIRECTIONS: directions, **T.runtime_tags()})
        mine = run.info.run_id
        keep = mine
        # Workers on other hosts may have raced past the lock: all keep the earliest. A
        # second look after a pause catches a rival whose insert committed late.
        locked = sqlite_path(self.tracking_uri) is not None  # see _parent_lock
        for pause in (0.0,) if locked else (0.0, PARENT_SETTLE_S):
            time.sleep(pause)
            found = self._find_parents()
            keep = found[0] if found else mine
            if keep != mine:
                client.delete_run(mine)
                break
        return keep

    # ---- trials -----------------------------------------------------------------------

    def wants_model(self, study: optuna.Study, value: float | Sequence[float]) -> bool:
        """Should a trial that reached `value` log its model under this tracker's policy?

        `best`: when no completed trial is better (single objective) or dominates it
        (multi-objective). Pass the result as `log_completed(log_model=...)`.
        """
        if self.log_models != "best":
            return self.log_models == "all"
        from optuna.trial import TrialState

        directions = [d.name for d in study.directions]
        values = [value] if isinstance(value, Real) else list(value)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if len(directions) == 1:
                if _better(trial.values[0], values[0], directions[0]):
                    return False
            elif _dominates(trial.values, values, directions):
                return False
        return True

    def start_trial(self, trial_number: int, params: dict[str, object], config: TrialConfig,
                    *, device: str, data_fingerprint: str, trial: Any = None) -> TrialRun:
        """Queue the trial's child run (params, tags, trial.yaml) and return its handle.

        The run is created by the sidecar while the trial trains; `trial` (the Optuna
        trial) gets the run id as user attr `mlflow_run_id` as soon as it exists. While the
        sidecar is still starting (the first trial of a process), the run is created here
        instead, so that trial does not wait for the sidecar at its end.
        """
        import uuid

        import yaml

        from . import trial_tasks
        from .datasets import dataset_inputs
        from .sidecar import SIDECAR
        from .trial_run import TrialRun

        if self.parent_run_id is None or self.experiment_id is None:
            raise RuntimeError("StudyTracker.start_study(study) must be called before "
                               "start_trial")
        token = uuid.uuid4().hex
        tags = {T.PARENT_RUN_ID: self.parent_run_id, T.STUDY: self.study_name,
                T.ROLE: T.ROLE_TRIAL, T.OPTUNA_STUDY: self.study_name,
                T.OPTUNA_TRIAL: str(trial_number), T.DEVICE: str(device),
                T.DATA_FINGERPRINT: data_fingerprint, **T.runtime_tags()}
        params = {**{k: T.clip(str(v), 6000) for k, v in params.items()},
                  T.TRIAL_NUMBER_PARAM: str(trial_number)}
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        run_name, made = f"trial-{trial_number}", None
        if self._warm is None or not self._warm.done():
            info = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info
            made = (info.run_id, info.artifact_uri)
        created = SIDECAR.submit(
            trial_tasks.create_run, self.tracking_uri, token, made=made,
            experiment_id=self.experiment_id, run_name=run_name, tags=tags, params=params,
            trial_yaml=yaml.dump(config.to_dict(), Dumper=dumper, sort_keys=False),
            datasets=dataset_inputs(config.data, data_fingerprint),
            system_metrics_s=SYSTEM_METRICS_INTERVAL_S if self.system_metrics else None)
        return TrialRun(tracking_uri=self.tracking_uri, token=token, created=created,
                        run_id=made[0] if made else None,
                        experiment_id=self.experiment_id, study_name=self.study_name,
                        trial_number=trial_number, log_models=self.log_models,
                        hold_best=self.log_models == "best" and self._single_objective,
                        trial=trial)

    def end_trial_run(self, run_id: str, state: str, reason: str) -> None:
        """End a trial's run by id (e.g. one left RUNNING by a killed worker)."""
        from mlflow.entities import RunTag

        state = state.upper()
        if state not in T.RUN_STATUS:
            raise ValueError(f"state must be one of {', '.join(T.RUN_STATUS)} but got {state!r}")
        self.client.log_batch(run_id, tags=[RunTag(T.OPTUNA_STATE, state),
                                            RunTag(T.OPTUNA_REASON, T.clip(reason))])
        self.client.set_terminated(run_id, T.RUN_STATUS[state])

    def end_orphans(self, study: optuna.Study) -> list[str]:
        """End child runs still RUNNING although Optuna has finished their trial.

        Happens when a worker died between Optuna recording the trial's end (or a
        heartbeat failing it) and the run's `end`. Trials Optuna still runs are not
        touched. Returns the run ids ended.
        """
        if self.parent_run_id is None:
            return []
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=(
                f"tags.`{T.PARENT_RUN_ID}` = '{self.parent_run_id}' "
                f"and attributes.status = 'RUNNING'"), max_results=5000)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        ended = []
        for run in runs:
            number = run.data.tags.get(T.OPTUNA_TRIAL, "")
            trial = trials.get(int(number)) if number.isdigit() else None
            if trial is None or not trial.state.is_finished():
                continue
            state = trial.state.name if trial.state.name in T.RUN_STATUS else "FAIL"
            self.end_trial_run(run.info.run_id, state,
                               f"run left RUNNING by a worker that stopped; Optuna state "
                               f"{trial.state.name}")
            ended.append(run.info.run_id)
        return ended

    # ---- end of study -----------------------------------------------------------------

    def finish_study(self, study: optuna.Study) -> None:
        """Plots, trials.csv and best params on the parent run, which then ends FINISHED,
        unless trials of the study are still running (other workers): then it stays
        RUNNING, and the last worker to finish leaves the final picture."""
        import concurrent.futures as cf

        from mlflow.entities import Metric, RunTag
        from optuna.trial import TrialState

        from .sidecar import SIDECAR
        from .study_artifacts import write_study_artifacts

        # the helper writes the last trial runs (and the held best model) while the
        # study's plots are drawn here
        draining = SIDECAR.start_drain()
        if self.parent_run_id is None:
            self.start_study(study)
        client, parent = self.client, self.parent_run_id
        with tempfile.TemporaryDirectory(prefix="tunetrack-study-") as tmp:
            summary = write_study_artifacts(study, Path(tmp))
            cf.wait(draining, timeout=300)
            self.end_orphans(study)  # after the drain: runs this process ended are not
            _report_into(study, Path(tmp), self.tracking_uri)
            client.log_artifacts(parent, tmp)
        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        stamp = int(time.time() * 1000)
        step = counts["complete"]
        metrics = [Metric(f"n_trials_{name}", n, stamp, step) for name, n in counts.items()
                   if name in ("complete", "pruned", "fail")]
        tags = {T.OPTUNA_DIRECTIONS: ",".join(d.name for d in study.directions)}
        if summary.skipped:
            tags["tunetrack.plots_skipped"] = T.clip("; ".join(
                f"{k}: {v}" for k, v in summary.skipped.items()))
        if len(study.directions) == 1 and counts["complete"]:
            best = study.best_trial
            metrics.append(Metric("best_value", float(best.value), stamp, step))
            tags.update({"best.trial_number": str(best.number),
                         "best.run_id": str(best.user_attrs.get(T.ATTR_RUN_ID, ""))})
            # tags, not params: params are immutable and the best changes as workers go on
            tags.update({f"best.{k}": T.clip(str(v)) for k, v in best.params.items()})
        elif counts["complete"]:
            metrics.append(Metric("pareto_front_size", len(study.best_trials), stamp, step))
        client.log_batch(parent, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        if not counts["running"] and not counts["waiting"]:
            client.set_terminated(parent, "FINISHED")


def _report_into(study: optuna.Study, folder: Path, tracking_uri: str) -> None:
    """`report.html` (what `tunetrack report` writes) into `folder`, for the parent run;
    a report that cannot be made is logged and left out, never fails the study."""
    from .report import write_report

    try:
        write_report(study, folder / "report.html", tracking_uri=tracking_uri)
    except Exception as exc:
        _log.warning("report.html not logged to the parent run: %s",
                     str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
