"""What `status`, `best`, `studies`, `compare` and `predict` print, as a table for people or
JSON / CSV for scripts (`--format`, like Optuna's own CLI `-f json`).

Each command first builds plain records (one dict per row; `params` nested); the table,
JSON and CSV are three renderings of the same records, so they cannot disagree. Reads
only Optuna's storage here: no torch, no mlflow, so these commands answer instantly.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from rich.table import Table
from rich.text import Text

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


def trial_records(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], *,
                  dead: frozenset[int] = frozenset()) -> list[Record]:
    """One record per trial: number, state, value(s), test accuracy, epochs run, duration,
    params, and why it did not complete (`dead`: RUNNING trials whose process is gone,
    which a read leaves as they are and names the command that cleans them up)."""
    n = len(study.directions)
    repair = f"process gone; `tunetrack repair {study.study_name}` fails and retries it"
    return [
        {
            "number": t.number,
            "state": t.state.name,
            **_values(t.values, n),
            "test_accuracy": t.user_attrs.get("test_accuracy"),
            "epochs": t.user_attrs.get("epochs_run"),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "params": dict(t.params),
            "reason": repair if t.number in dead else t.user_attrs.get("reason"),
        }
        for t in trials
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
    """One record per image: the top class and its probability as their own fields (one
    CSV row per image, columns a spreadsheet sorts by), then the ranked list."""
    return [{"image": image, "label": ranked[0][0], "probability": ranked[0][1],
             "predictions": [{"label": label, "probability": p} for label, p in ranked]}
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
    flat = []
    for record in _clean(records):
        row: Record = {}
        for key, value in record.items():
            if isinstance(value, dict):
                row.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                row[key] = json.dumps(value) if isinstance(value, list) else value
        flat.append(row)
    columns = list(dict.fromkeys(key for row in flat for key in row))
    buffer = io.StringIO()
    # the csv module, not pandas: a column with gaps keeps its integers (18, not 18.0)
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        from tunetrack.models.errors import TunetrackError

        raise TunetrackError(f"format must be one of {', '.join(FORMATS)} but got {fmt!r}")


def render(records: list[Record], fmt: str,
           table: Callable[[list[Record]], Table | str]) -> Table | str:
    """The records as `table(records)` (a rich Table, or lines of text), or as JSON / CSV."""
    _check_format(fmt)
    if fmt == "json":
        return to_json(records)
    if fmt == "csv":
        return to_csv(records)
    return table(records)


def render_one(record: Record, fmt: str, text: Callable[[], Any]) -> Any:
    """A command with one result (`promote`, `reproduce`, `report`, `repair`): `text()` for
    people, one JSON object, or a CSV header and one row."""
    _check_format(fmt)
    if fmt == "json":
        return json.dumps(_clean(record), indent=2, allow_nan=False)
    return to_csv([record]) if fmt == "csv" else text()


def render_sections(sections: dict[str, list[Record]], fmt: str,
                    table: Callable[[dict[str, list[Record]]], Any]) -> Any:
    """A command whose result has several parts (`compare`: trials and cost to target):
    one JSON object with a list per part, or one CSV whose first column `section` names
    the part of each row, so scripts still read one document."""
    _check_format(fmt)
    if fmt == "json":
        return json.dumps(_clean(sections), indent=2, allow_nan=False)
    if fmt == "csv":
        return to_csv([{"section": name, **r} for name, rows in sections.items()
                       for r in rows])
    return table(sections)


def _num(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _value_text(record: Record) -> str:
    values = [v for k, v in record.items() if k == "value" or k.startswith("value_")]
    return ", ".join(_num(v) for v in values) if any(v is not None for v in values) else "-"


@dataclass
class Column:
    """One column of a table that must fit the terminal: `keep` columns are never dropped
    nor cut (ids a user copies); the others are dropped highest `drop` first until the rest
    fits; the one `flex` column (free text) is cut with an ellipsis instead of wrapped, so
    every row stays one line."""

    header: str
    cells: list[str]
    keep: bool = False
    drop: int = 0
    flex: bool = False
    justify: str = "left"

    @property
    def natural(self) -> int:
        return max([len(self.header), *(len(c) for c in self.cells)])


def _table_width(columns: list[Column], flex_width: int | None = None) -> int:
    """Rich's default box: one space either side of each cell, one rule between columns
    and at both edges."""
    return sum((flex_width if c.flex and flex_width is not None else c.natural) + 3
               for c in columns) + 1


FLEX_MIN = 30  # narrower, a row of parameters says little: drop other columns first


def fit_table(title: str, columns: list[Column], *, width: int | None) -> Table:
    """The columns as a rich Table no wider than `width` (None: all of them, `--wide`).

    Rich alone squeezes every column to a sliver when a table is too wide (headers `n…`,
    run ids `b2bb…`); choosing which columns to show keeps the rest readable and the ids
    whole. A caption names what was left out."""
    shown = list(columns)
    if width is not None:
        def too_wide() -> bool:
            return _table_width(shown, FLEX_MIN) > width

        while too_wide() and any(not c.keep for c in shown):
            shown.remove(max((c for c in shown if not c.keep),
                             key=lambda c: (c.drop, shown.index(c))))
    hidden = [c.header for c in columns if c not in shown]
    table = Table(title=title, caption=(f"not shown to fit {width} columns: "
                                        f"{', '.join(hidden)} (--wide shows all)")
                  if hidden else None)
    fixed = _table_width([c for c in shown if not c.flex])
    for c in shown:
        if c.flex:
            room = None if width is None else max(FLEX_MIN, width - fixed - 3)
            table.add_column(c.header, no_wrap=True, overflow="ellipsis", max_width=room,
                             justify=c.justify)  # type: ignore[arg-type]
        else:
            table.add_column(c.header, no_wrap=True, min_width=c.natural,
                             justify=c.justify)  # type: ignore[arg-type]
    for row in zip(*(c.cells for c in shown), strict=True):
        table.add_row(*(Text(cell) for cell in row))
    return table


def short_names(names: list[str]) -> dict[str, str]:
    """Dotted parameter names by their last part (`train.lr` -> `lr`) where that is
    unambiguous, else in full."""
    last = [n.rsplit(".", 1)[-1] for n in names]
    return {n: s if last.count(s) == 1 else n for n, s in zip(names, last, strict=True)}


def trials_table(records: list[Record], title: str, width: int | None = None) -> Table:
    """One line per trial; the parameters (short names) and the reason share the last
    column, cut to fit; `--wide` or `-f json` give them in full."""
    names = short_names(sorted({k for r in records for k in r["params"]}))
    details = []
    for r in records:
        params = " ".join(f"{names[k]}={_short(v)}" for k, v in sorted(r["params"].items()))
        details.append(f"({r['reason']}) {params}" if r["reason"] else params)
    columns = [
        Column("#", [str(r["number"]) for r in records], keep=True, justify="right"),
        Column("state", [r["state"] for r in records], keep=True),
        Column("value", [_value_text(r) for r in records], keep=True),
        Column("test acc", [_num(r["test_accuracy"]) for r in records], drop=2),
        Column("epochs", [_num(r["epochs"]) for r in records], drop=3, justify="right"),
        Column("duration", ["-" if r["duration_s"] is None else f"{r['duration_s']:.1f}s"
                            for r in records], drop=4, justify="right"),
        Column("params / reason", details, flex=True, drop=1),
    ]
    return fit_table(title, columns, width=width)


def best_table(records: list[Record], title: str, width: int | None = None) -> Table:
    """Parameters down, trials across (several for a Pareto front): trials that do not fit
    are named in the caption."""
    names = sorted({k for r in records for k in r["params"]})
    columns = [Column("parameter", ["value", "test accuracy", *names], keep=True)]
    for i, r in enumerate(records):
        cells = [_value_text(r), _short(r["test_accuracy"] or "-"),
                 *(_short(r["params"].get(n, "-")) for n in names)]
        columns.append(Column(f"trial {r['number']}", cells, keep=i == 0, drop=i))
    return fit_table(title, columns, width=width)


def studies_table(records: list[Record], width: int | None = None) -> Table:
    columns = [
        Column("name", [r["name"] for r in records], keep=True),
        Column("trials", [str(r["trials"]) for r in records], keep=True, justify="right"),
        Column("best value", [", ".join(_num(v) for v in r["best_values"])
                              if r["best_values"] else "-" for r in records], drop=2),
        Column("directions", [", ".join(r["directions"]) for r in records], drop=1),
    ]
    return fit_table("studies", columns, width=width)


# `compare`'s columns: (header, drop rank: highest first); number and run id always shown
_COMPARE_COLUMNS = {"number": ("#", 0), "state": ("state", 7), "test_accuracy": ("test acc", 4),
                    "epochs": ("epochs", 5), "duration_s": ("seconds", 6),
                    "cost_device_seconds": ("device s", 8),
                    "cost_peak_memory_mb": ("peak MB", 9), "run_id": ("run id", 0)}


def _cell(value: Any) -> str:
    return ("-" if value is None or value != value else f"{value:.4g}"
            if isinstance(value, float) else str(value))


def rows_table(records: list[Record], title: str, width: int | None = None) -> Table:
    """`compare`: number, value(s) and the full run id always; then test accuracy,
    epochs, duration, state and cost; the parameters (short names) first to go."""
    keys = list(records[0]) if records else []
    params = [k for k in keys if k not in _COMPARE_COLUMNS and k != "value"
              and not k.startswith("value_")]
    names = short_names([k.removeprefix("params_") for k in params])
    columns = []
    for key in keys:
        cells = [_cell(r[key]) for r in records]
        if key == "value" or key.startswith("value_") or key in ("number", "run_id"):
            columns.append(Column(_COMPARE_COLUMNS.get(key, (key, 0))[0], cells, keep=True))
        elif key in _COMPARE_COLUMNS:
            columns.append(Column(_COMPARE_COLUMNS[key][0], cells, drop=_COMPARE_COLUMNS[key][1]))
        else:  # parameters: the last one goes first
            columns.append(Column(names[key.removeprefix("params_")], cells,
                                  drop=10 + params.index(key)))
    return fit_table(title, columns, width=width)


def cost_table(records: list[Record], title: str, width: int | None = None) -> Table:
    """`compare`'s second table: the device seconds until the best came within 90/95/99 %
    of the final best."""
    columns = [
        Column("target", [r["target"] for r in records], keep=True),
        Column("value", [f"{r['target_value']:.4g}" for r in records], keep=True),
        Column("trial", [str(r["trial"]) for r in records], keep=True, justify="right"),
        Column("finished", [str(r["trials_finished"]) for r in records], drop=2,
               justify="right"),
        Column("device s", [f"{r['device_seconds']:.2f}" for r in records], keep=True,
               justify="right"),
        Column("share", [_num(r["share_of_total"], ".0%") for r in records], drop=1,
               justify="right"),
    ]
    return fit_table(title, columns, width=width)


def history_table(entries: list[Record], title: str, width: int | None = None) -> Table:
    """`history`: when, alias, decision, version and p always; the other evidence dropped
    (counts first) where the terminal is narrow."""
    def col(header: str, cells: list[str], drop: int = 0) -> Column:
        return Column(header, cells, keep=not drop, drop=drop)

    def diff(e: Record) -> str:
        ci = e.get("ci95")
        return "-" if e.get("difference") is None else (
            f"{e['difference']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""))

    columns = [
        col("at", [str(e.get("at", "-")) for e in entries]),
        col("alias", [e["alias"] for e in entries]),
        col("decision", [e["decision"] for e in entries]),
        col("version", [str(e.get("version") or "-") for e in entries]),
        col("champion", [str(e.get("champion_version") or e.get("replaced") or "-")
                         for e in entries], 5),
        col("trial", [str(e.get("trial", "-")) for e in entries], 6),
        col("n", [str(e.get("n", "-")) for e in entries], 7),
        col("candidate", [_num(e.get("candidate_test_accuracy")) for e in entries], 3),
        col("champion acc", [_num(e.get("champion_test_accuracy")) for e in entries], 4),
        col("difference [95% CI]", [diff(e) for e in entries], 2),
        col("b", [str(e.get("b_champion_only", "-")) for e in entries], 8),
        col("c", [str(e.get("c_candidate_only", "-")) for e in entries], 8),
        col("p", [_num(e.get("p_value"), ".3g") for e in entries]),
    ]
    return fit_table(title, columns, width=width)


def promotion_record(result: Any) -> Record:
    """`promote -f json|csv`: the decision, the numbers behind it, and the message."""
    ev = result.evidence
    return {"promoted": result.promoted, "dry_run": result.dry_run, "version": result.version,
            "candidate_test_accuracy": result.candidate_accuracy,
            "champion_test_accuracy": result.champion_accuracy,
            **({"difference": ev.difference, "ci95": [ev.ci_low, ev.ci_high],
                "b_champion_only": ev.champion_only, "c_candidate_only": ev.candidate_only,
                "p_value": ev.p_value} if ev is not None else {}),
            "decision": result.decision, "message": result.message}


def reproduction_record(result: Any) -> Record:
    """`reproduce -f json|csv`: the verdict and the numbers behind it."""
    recorded, now = result.test_accuracy or (None, None)
    return {"run_id": result.run_id, "reproduced": result.reproduced, "exact": result.exact,
            "device": result.device, "epochs_recorded": result.epochs_recorded,
            "epochs_now": result.epochs_now, "test_accuracy_recorded": recorded,
            "test_accuracy_now": now, "first_difference": result.first_difference,
            "environment_differences": list(result.environment_differences),
            "reproduction_run_id": result.reproduction_run_id, "lines": list(result.lines)}


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
