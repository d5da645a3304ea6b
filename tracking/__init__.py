"""MLflow tracking for Optuna studies. Five things to know:

1. **Store**: the tracking URI (`resolve_tracking_uri`: `--tracking-uri`,
   `MLFLOW_TRACKING_URI`, else `./mlflow.db`), checked before anything is created
   (`check_reachable`: bad input is an error, nothing half-written).
2. **StudyTracker**: one experiment per study and one parent run shared by every worker
   and resume; `start_study`, `trial_run` per trial, `finish_study` (plots, trials.csv,
   best params on the parent).
3. **TrialRun**: a trial's child run as the trial sees it, and the trainer's epoch
   callback. It never raises and never waits on MLflow; a `NullRun` stands in when
   tracking is off or its helper is gone. `end` links run and trial both ways
   (`user_attrs["mlflow_run_id"]`, tag and param `optuna.trial_number`).
4. **The helper process** (`helper.py`, `writer.py`): all MLflow writing happens there,
   in order, while the trials train; a failing store costs warnings, never Optuna data.
5. **The record** (`record.py`): the one place that decides what a trial's run holds
   (params, tags, epoch and final metrics, files, the model under `log_models`).

    tracker = StudyTracker(study_name="digits-mlp")
    tracker.check_reachable()            # before any training
    tracker.start_study(study)
    run = tracker.trial_run(trial, params, cfg, device="cpu", data_fingerprint=fp)
    Trainer(..., callbacks=[run]).fit()  # run.on_epoch_end logs every epoch
    run.completed(values=value, model=model, splits=splits, test_eval=test, fit=fit)
    run.end("COMPLETE")
    tracker.finish_study(study)
    promote(study, model_name="digits-classifier")

Importing this package is cheap: MLflow, matplotlib and Optuna's plotting load only when a
name below is first used (module `__getattr__`), and in the study process only for
reading (`compare_trials`, `promote`, `report`). Tag and attribute names: `tags`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "StudyTracker": "study",
    "TrialRun": "trial_run",
    "NullRun": "trial_run",
    "PromotionResult": "registry",
    "promote": "registry",
    "promotion_history": "registry",
    "compare_trials": "compare",
    "predict": "prediction",
    "resolve_tracking_uri": "uri",
    "check_reachable": "uri",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .compare import compare_trials as compare_trials
    from .prediction import predict as predict
    from .registry import PromotionResult as PromotionResult
    from .registry import promote as promote
    from .registry import promotion_history as promotion_history
    from .report import write_report as write_report
    from .study import StudyTracker as StudyTracker
    from .trial_run import NullRun as NullRun
    from .trial_run import TrialRun as TrialRun
    from .uri import check_reachable as check_reachable
    from .uri import resolve_tracking_uri as resolve_tracking_uri


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
