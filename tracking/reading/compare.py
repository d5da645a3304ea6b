"""A ranked table of a study's trials, joined with what MLflow recorded about them.

Optuna's user attributes are read first (`test_accuracy`, `epochs_run`), so the table
needs no MLflow at all for trials tracked by tunetrack; MLflow is asked only for completed
trials that lack them, and an unreachable store just leaves those cells empty.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tunetrack.models import TunetrackError

from .. import tags as T
from ..directions import direction_sign

COST_SHOWN = ("cost_device_seconds", "cost_peak_memory_mb")  # all of them: cost_report

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from optuna.trial import FrozenTrial

_log = logging.getLogger(__name__)


def rank_key(trial: FrozenTrial, signs: list[int]) -> tuple:
    """Completed by value (direction aware), then pruned by their last reported value,
    then the rest by number."""
    from optuna.trial import TrialState

    if trial.state == TrialState.COMPLETE and trial.values is not None:
        return (0, *[s * v for s, v in zip(signs, trial.values, strict=True)], trial.number)
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        last = trial.intermediate_values[max(trial.intermediate_values)]
        return (1, signs[0] * last, *[0.0] * (len(signs) - 1), trial.number)
    return (2, *[0.0] * len(signs), trial.number)


def _mlflow_metrics(run_ids: list[str], tracking_uri: str | None) -> dict[str, dict]:
    """Metrics of the given runs; {} when the store cannot be reached."""
    if not run_ids:
        return {}
    from mlflow.exceptions import MlflowException

    from ..runs import HELPER
    from ..store import open_client

    try:
        _, client = open_client(tracking_uri)
    except TunetrackError as exc:
        _log.warning("compare_trials: no MLflow metrics (%s)", exc)
        return {}
    HELPER.flush()  # runs this process is still writing
    found = {}
    for run_id in run_ids:
        try:
            found[run_id] = client.get_run(run_id).data.metrics
        except MlflowException as exc:
            _log.info("compare_trials: run %s not found (%s)", run_id, exc)
    return found


def compare_trials(study: optuna.Study, *, tracking_uri: str | None = None,
                   top: int = 10, trials: Sequence[Any] | None = None,
                   whole: Callable[[list[Any]], list[FrozenTrial]] | None = None
                   ) -> pd.DataFrame:
    """The `top` trials, best first: number, state, value(s), test_accuracy, epochs,
    duration_s, run_id and the sampled params (one column each).

    `trials` ranks these instead of the study's (summaries: state, values, the last
    report), and `whole` reads the top ones in full: a 10k-trial study is ranked without
    building every trial."""
    import pandas as pd
    from optuna.trial import TrialState

    if top < 1:
        raise TunetrackError(f"top must be >= 1 but got {top}")
    signs = [direction_sign(d) for d in study.directions]
    ranked = trials if trials is not None else study.get_trials(deepcopy=False)
    trials = sorted(ranked, key=lambda t: rank_key(t, signs))[:top]
    if whole is not None:
        trials = whole(trials)
    missing = [t.user_attrs[T.ATTR_RUN_ID] for t in trials
               if t.state == TrialState.COMPLETE and T.ATTR_RUN_ID in t.user_attrs
               and T.ATTR_TEST_ACCURACY not in t.user_attrs]
    metrics = _mlflow_metrics(missing, tracking_uri)
    rows = []
    for trial in trials:
        run_id = trial.user_attrs.get(T.ATTR_RUN_ID)
        logged = metrics.get(run_id, {})
        row: dict[str, object] = {"number": trial.number, "state": trial.state.name}
        values = trial.values or [math.nan] * len(signs)
        if len(signs) == 1:
            row["value"] = values[0]
        else:
            row.update({f"value_{i}": v for i, v in enumerate(values)})
        epochs = trial.user_attrs.get(T.ATTR_EPOCHS_RUN, logged.get("epochs_run"))
        if epochs is None and trial.intermediate_values:
            epochs = len(trial.intermediate_values)
        duration = trial.duration.total_seconds() if trial.duration is not None else math.nan
        row.update({
            "test_accuracy": trial.user_attrs.get(T.ATTR_TEST_ACCURACY,
                                                  logged.get("test_accuracy", math.nan)),
            "epochs": epochs if epochs is not None else math.nan,
            "duration_s": duration, "run_id": run_id,
        })
        row.update({key: trial.user_attrs.get(key, math.nan) for key in COST_SHOWN})
        row.update(trial.params)
        rows.append(row)
    return pd.DataFrame(rows)
