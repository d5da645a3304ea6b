"""MLflow tracking for Optuna studies: a parent run per study, a child run per trial.

    tracker = StudyTracker(study_name="digits-mlp")
    tracker.check_reachable()            # before any training
    tracker.start_study(study)
    run = tracker.start_trial(n, params, cfg, device="cpu", data_fingerprint=fp, trial=trial)
    Trainer(..., callbacks=[run]).fit()  # run.on_epoch_end logs every epoch
    run.log_completed(...); run.end("COMPLETE")
    tracker.finish_study(study)
    promote(study, model_name="digits-classifier")

Importing this package is cheap: MLflow, matplotlib and Optuna's plotting load only when a
name below is first used (module `__getattr__`). Tag and attribute names: `tags`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "StudyTracker": "study",
    "TrialRun": "trial_run",
    "PromotionResult": "registry",
    "promote": "registry",
    "promotion_history": "registry",
    "compare_trials": "compare",
    "predict": "prediction",
    "resolve_tracking_uri": "uri",
    "check_reachable": "uri",
    "write_insight_artifacts": "insight",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .compare import compare_trials as compare_trials
    from .insight import write_insight_artifacts as write_insight_artifacts
    from .prediction import predict as predict
    from .registry import PromotionResult as PromotionResult
    from .registry import promote as promote
    from .registry import promotion_history as promotion_history
    from .report import write_report as write_report
    from .study import StudyTracker as StudyTracker
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
