"""Rich tables of a study for the CLI (`status`, `best`, `studies`, the run summary).

Reads only Optuna's storage: no torch, no mlflow, so these commands answer instantly.
"""

from __future__ import annotations

import optuna
from rich.table import Table

_STATE = optuna.trial.TrialState


def _value(trial: optuna.trial.FrozenTrial) -> str:
    if trial.values is None:
        return "-"
    return ", ".join(f"{v:.4f}" for v in trial.values)


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _duration(trial: optuna.trial.FrozenTrial) -> str:
    return f"{trial.duration.total_seconds():.1f}s" if trial.duration else "-"


def trials_table(study: optuna.Study) -> Table:
    table = Table(title=f"study {study.study_name}")
    for column in ("#", "state", "value", "test acc", "epochs", "duration", "params / reason"):
        table.add_column(column)
    for t in study.get_trials(deepcopy=False):
        test = t.user_attrs.get("test_accuracy")
        detail = " ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in t.params.items())
        if t.user_attrs.get("reason"):
            detail += f"  [dim]({t.user_attrs['reason']})[/]"
        table.add_row(
            str(t.number),
            t.state.name,
            _value(t),
            "-" if test is None else f"{test:.4f}",
            str(t.user_attrs.get("epochs_run", "-")),
            _duration(t),
            detail,
        )
    return table


def best_table(study: optuna.Study) -> Table:
    best = study.best_trials if len(study.directions) > 1 else _best_single(study)
    table = Table(title=f"best of study {study.study_name}")
    table.add_column("parameter")
    for t in best:
        table.add_column(f"trial {t.number}")
    rows = [
        ("value", [_value(t) for t in best]),
        ("test accuracy", [_short(t.user_attrs.get("test_accuracy", "-")) for t in best]),
    ]
    names = sorted({k for t in best for k in t.params})
    rows += [(n, [_short(t.params.get(n, "-")) for t in best]) for n in names]
    for name, cells in rows:
        table.add_row(name, *cells)
    return table


def _best_single(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from tunetrack.models.errors import TunetrackError

    try:
        return [study.best_trial]
    except ValueError:
        raise TunetrackError(f"study {study.study_name!r} has no completed trial yet") from None


def study_summary(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = {
        s: sum(t.state == s for t in trials) for s in (_STATE.COMPLETE, _STATE.PRUNED, _STATE.FAIL)
    }
    text = (
        f"study {study.study_name}: {len(trials)} trials, {counts[_STATE.COMPLETE]} "
        f"complete, {counts[_STATE.PRUNED]} pruned, {counts[_STATE.FAIL]} failed"
    )
    if counts[_STATE.COMPLETE] and len(study.directions) == 1:
        best = study.best_trial
        test = best.user_attrs.get("test_accuracy")
        text += f"; best value {best.value:.4f} (trial {best.number}"
        text += f", test accuracy {test:.4f})" if test is not None else ")"
    return text


def studies_table(storage: optuna.storages.BaseStorage) -> Table:
    table = Table(title="studies")
    for column in ("name", "trials", "best value", "directions"):
        table.add_column(column)
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        best = _value(s.best_trial) if s.best_trial else "-"
        table.add_row(
            s.study_name, str(s.n_trials), best, ", ".join(d.name.lower() for d in s.directions)
        )
    return table
