"""What `status`, `best`, `studies`, `compare` and `predict` print, as a table for people or
JSON / CSV for scripts (`--format`, like Optuna's own CLI `-f json`).

Each command first builds plain records (one dict per row; `params` nested); the table,
JSON and CSV are three renderings of the same records, so they cannot disagree. Reads
only Optuna's storage here: no torch, no mlflow, so these commands answer instantly.
"""

from __future__ import annotations

import datetime
import io
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from rich.table import Table

_STATE = optuna.trial.TrialState
Record = dict[str, Any]


FORMATS = ("table", "json", "csv")


# ---- records --------------------------------------------------------------------------------


def _values(values: Sequence[float] | None, n_objectives: int) -> Record:
    """`value` for one objective, `value_0`, `value_1`, ... for several (as `compare`)."""
    values = list(values) if values is not None else [None] * n_objectives
    if n_objectives == 1:
        return {"value": values[0]}
    return {f"value_{i}": v for i, v in enumerate(values)}


def trial_records(study: optuna.Study) -> list[Record]:
    """Every trial: number, state, value(s), test accuracy, epochs run, duration, params,
    and why it did not complete."""
    n = len(study.directions)
    return [
        {
            "number": t.number,
            "state": t.state.name,
            **_values(t.values, n),
            "test_accuracy": t.user_attrs.get("test_accuracy"),
            "epochs": t.user_attrs.get("epochs_run"),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "params": dict(t.params),
            "reason": t.user_attrs.get("reason"),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def best_records(study: optuna.Study) -> list[Record]:
    """The best trial (the Pareto front with several objectives)."""
    best = study.best_trials if len(study.directions) > 1 else _best_single(study)
    n = len(study.directions)
    return [{"number": t.number, **_values(t.values, n),
             "test_accuracy": t.user_attrs.get("test_accuracy"), "params": dict(t.params)}
            for t in best]


def _best_single(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from tunetrack.models.errors import TunetrackError

    try:
        return [study.best_trial]
    except ValueError:
        raise TunetrackError(f"study {study.study_name!r} has no completed trial yet") from None


def study_records(storage: optuna.storages.BaseStorage) -> list[Record]:
    return [
        {
            "name": s.study_name,
            "trials": s.n_trials,
            "best_values": s.best_trial.values if s.best_trial else None,
            "directions": [d.name.lower() for d in s.directions],
            "started": s.datetime_start,
        }
        for s in optuna.get_all_study_summaries(storage, include_best_trial=True)
    ]


def prediction_records(predictions: list[tuple[str, list[tuple[str, float]]]]) -> list[Record]:
    return [{"image": image, "predictions": [{"label": label, "probability": p}
                                             for label, p in ranked]}
            for image, ranked in predictions]


# ---- renderings -----------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> null, datetimes -> ISO 8601, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy / pandas scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(records: list[Record]) -> str:
    return json.dumps(_clean(records), indent=2, allow_nan=False)


def to_csv(records: list[Record]) -> str:
    """One row per record; nested mappings become dotted columns (`params.train.lr`),
    lists are written as JSON."""
    import pandas as pd

    flat = []
    for record in _clean(records):
        row: Record = {}
        for key, value in record.items():
            if isinstance(value, dict):
                row.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                row[key] = json.dumps(value) if isinstance(value, list) else value
        flat.append(row)
    buffer = io.StringIO()
    pd.DataFrame(flat).to_csv(buffer, index=False)
    return buffer.getvalue()


def render(records: list[Record], fmt: str,
           table: Callable[[list[Record]], Table | str]) -> Table | str:
    """The records as `table(records)` (a rich Table, or lines of text), or as JSON / CSV."""
    if fmt not in FORMATS:
        from tunetrack.models.errors import TunetrackError

        raise TunetrackError(f"format must be one of {', '.join(FORMATS)} but got {fmt!r}")
    if fmt == "json":
        return to_json(records)
    if fmt == "csv":
        return to_csv(records)
    return table(records)


def _num(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _value_text(record: Record) -> str:
    values = [v for k, v in record.items() if k == "value" or k.startswith("value_")]
    return ", ".join(_num(v) for v in values) if any(v is not None for v in values) else "-"


def trials_table(records: list[Record], title: str) -> Table:
    table = Table(title=title)
    for column in ("#", "state", "value", "test acc", "epochs", "duration", "params / reason"):
        table.add_column(column)
    for r in records:
        detail = " ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in r["params"].items())
        if r["reason"]:
            detail += f"  [dim]({r['reason']})[/]"
        duration = "-" if r["duration_s"] is None else f"{r['duration_s']:.1f}s"
        table.add_row(str(r["number"]), r["state"], _value_text(r), _num(r["test_accuracy"]),
                      _num(r["epochs"]), duration, detail)
    return table


def best_table(records: list[Record], title: str) -> Table:
    table = Table(title=title)
    table.add_column("parameter")
    for r in records:
        table.add_column(f"trial {r['number']}")
    rows = [("value", [_value_text(r) for r in records]),
            ("test accuracy", [_short(r["test_accuracy"] or "-") for r in records])]
    names = sorted({k for r in records for k in r["params"]})
    rows += [(n, [_short(r["params"].get(n, "-")) for r in records]) for n in names]
    for name, cells in rows:
        table.add_row(name, *cells)
    return table


def studies_table(records: list[Record]) -> Table:
    table = Table(title="studies")
    for column in ("name", "trials", "best value", "directions"):
        table.add_column(column)
    for r in records:
        best = ", ".join(_num(v) for v in r["best_values"]) if r["best_values"] else "-"
        table.add_row(r["name"], str(r["trials"]), best, ", ".join(r["directions"]))
    return table


def rows_table(records: list[Record], title: str) -> Table:
    """A flat table of records with the same keys (`compare`): floats to 4 digits."""
    table = Table(title=title)
    for column in records[0] if records else ():
        table.add_column(str(column).removeprefix("params_"))
    for r in records:
        table.add_row(*("-" if v is None or v != v else f"{v:.4g}" if isinstance(v, float)
                        else str(v) for v in r.values()))
    return table


def prediction_lines(records: list[Record]) -> str:
    """`IMAGE: label p, label p` per image: greppable, one line each."""
    return "".join(f"{r['image']}: " + ", ".join(
        f"{p['label']} {p['probability']:.3f}" for p in r["predictions"]) + "\n"
        for r in records)


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
