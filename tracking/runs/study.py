"""`StudyTracker`: one MLflow experiment per study, one shared parent run, a child per trial.

The study process's side only: each call here queues a message for the helper process
(`helper_link.py`, the `helper_process` room) and returns; nothing here imports MLflow.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tunetrack.models import TunetrackError
from tunetrack.models.errors import unknown

from .. import tags as T
from ..store import check_reachable, redact, resolve_tracking_uri
from .helper_link import HELPER
from .trial_run import NullRun, TrialRun

if TYPE_CHECKING:
    import optuna

    from tunetrack.models import TrialConfig

LOG_MODEL_POLICIES = ("all", "best", "none")
SYSTEM_METRICS_INTERVAL_S = 10.0
PARENT_WAIT_S = 300.0  # start_study(wait=True): longest wait for the parent run's id
_keys = itertools.count()


class StudyTracker:
    """Logs an Optuna study to MLflow, through the helper process.

    Args:
        study_name: Optuna study name; tags every run.
        experiment: MLflow experiment name (default: `study_name`).
        tracking_uri: store; default `MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db`.
        log_models: `all` (every completed trial), `best` (every trial that is the best
            so far when it completes; with several objectives, every trial that joins
            the Pareto front) or `none` (see `run_contents.model_wanted`).
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
        self._key = f"study-{next(_keys)}"
        self._parent: int | None = None  # helper message that answers the parent run id
        self._parent_id: str | None = None

    def __repr__(self) -> str:
        return (f"StudyTracker(study={self.study_name!r}, experiment={self.experiment_name!r}, "
                f"tracking_uri={redact(self.tracking_uri)!r})")  # reprs end up in logs

    @property
    def client(self):
        """An `MlflowClient` of this store, for reading (imports MLflow here)."""
        from ..store import client_for

        return client_for(self.tracking_uri)

    def check_reachable(self) -> None:
        """Raise TunetrackError (naming the URI) unless the store answers; a few seconds."""
        check_reachable(self.tracking_uri)

    def start_study(self, study: optuna.Study, *, wait: bool = True) -> str | None:
        """Get or create the experiment and the study's one parent run (in the helper).
        `wait=True` returns its id; `wait=False` returns None at once, and the id is
        remembered in the study's user attributes once known."""
        self._parent = HELPER.send(
            "start_study", want_result=True, study=self._key, uri=self.tracking_uri,
            experiment=self.experiment_name, study_name=self.study_name,
            directions=",".join(d.name for d in study.directions),
            remembered=study.user_attrs.get(T.ATTR_PARENT_RUN_ID))
        return self.parent_run_id_of(study, wait=PARENT_WAIT_S if wait else 0.0)

    def parent_run_id_of(self, study: optuna.Study, wait: float = 0.0) -> str | None:
        """The parent run's id once the helper has it (written into the study's user
        attribute `mlflow_parent_run_id` the first time), else None."""
        if self._parent_id is None and self._parent is not None and (
                wait or HELPER.ready(self._parent)):
            self._parent_id = HELPER.result(self._parent, timeout=wait)
            self._parent = None if self._parent_id else self._parent
            if self._parent_id and study.user_attrs.get(T.ATTR_PARENT_RUN_ID) != \
                    self._parent_id:
                study.set_user_attr(T.ATTR_PARENT_RUN_ID, self._parent_id)
        return self._parent_id

    @property
    def parent_run_id(self) -> str | None:
        return self._parent_id

    def trial_run(self, trial: optuna.Trial, params: dict[str, object], config: TrialConfig,
                  *, device: str, data_fingerprint: str, tags: dict[str, str] | None = None,
                  code: Mapping[str, str] | None = None) -> TrialRun | NullRun:
        """The trial's run: created by the helper while the trial trains. `tags`: more
        tags for the run (e.g. a fused member's group); `code`: {role: import path} of the
        user's code the trial runs (its provenance becomes tags, `code_provenance.py`)."""
        from .run_contents import run_fields

        if self._parent is None and self._parent_id is None:
            raise RuntimeError("StudyTracker.start_study(study) must be called first")
        if not HELPER.usable:
            return NullRun()
        self.parent_run_id_of(trial.study)
        values, run_tags, trial_yaml = run_fields(
            trial.number, params, config, study_name=self.study_name, device=device,
            data_fingerprint=data_fingerprint, code=code)
        return TrialRun(trial, study=self._key, params=values,
                        tags={**run_tags, **(tags or {})}, trial_yaml=trial_yaml,
                        log_models=self.log_models,
                        data=config.data,  # its splits as dataset inputs (datasets.py)
                        system_metrics_s=SYSTEM_METRICS_INTERVAL_S if self.system_metrics
                        else None)

    def finish_study(self, study: optuna.Study, *, wait: bool = True,
                     status: str = "FINISHED") -> None:
        """Plots, trials.csv and best params on the parent run, which then ends `status`
        (KILLED for a study stopped by Ctrl-C or SIGTERM, FAILED for one stopped by an
        error), unless trials of the study still run (other workers). `wait`: return once
        everything this process queued is written."""
        if self._parent is None and self._parent_id is None:
            self.start_study(study, wait=False)
        HELPER.send("finish_study", study=self._key,
                    trials=study.get_trials(deepcopy=False),
                    directions=[d.name for d in study.directions],
                    status=status)
        self.parent_run_id_of(study, wait=PARENT_WAIT_S if wait else 0.0)
        if wait:
            HELPER.flush()

    def end_trial_run(self, run_id: str, state: str, reason: str) -> None:
        """End a trial's run by id, in this process (e.g. one left RUNNING by a killed
        worker)."""
        from ..store import end_run

        state = state.upper()
        if state not in T.RUN_STATUS:
            raise ValueError(f"state must be one of {', '.join(T.RUN_STATUS)} but got {state!r}")
        end_run(self.client, run_id, state, reason)


def start_helper(tracking_uri: str | None = None) -> None:
    """Check the store and start the helper process now, so that it imports MLflow while
    the caller imports torch and Optuna and loads the data (`tunetrack run` does this
    first). Raises TunetrackError, and starts nothing, when the store does not answer."""
    check_reachable(resolve_tracking_uri(tracking_uri))
    HELPER.start()
