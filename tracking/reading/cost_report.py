"""What a study spent, and what it spent to get close to its best (`report`, `compare`).

Every trial records its cost as Optuna user attributes (`cost_device_seconds`, ...; see
`tunetrack.models.cost`), so this reads Optuna's storage only, no MLflow.

**Cost to target**: walk the finished trials in completion order, adding up the device
seconds of every one of them (pruned and failed trials spent compute too), and note when
the best-so-far value of the first objective first came within a fraction of the study's
final best: value >= f * best when maximising, value <= best / f when minimising.

The report's other sections use its small HTML pieces too (`metric_names`, `plotly_div`,
`table_html`): `report_html` imports this module, never the other way round.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from optuna.trial import FrozenTrial

TARGET_FRACTIONS = (0.90, 0.95, 0.99, 1.0)
COST_KEY = "cost_device_seconds"
COST_COLUMNS = ("cost_device_seconds", "cost_wall_seconds", "cost_cpu_seconds",
                "cost_peak_memory_mb", "cost_peak_device_memory_mb", "cost_energy_joules")


def finished_in_order(study: optuna.Study, trials: Sequence[Any] | None = None
                      ) -> list[FrozenTrial]:
    """Finished trials (complete, pruned, failed) by completion time, then number; of
    `trials` (summaries will do) when given, else of the study."""
    trials = [t for t in (study.get_trials(deepcopy=False) if trials is None else trials)
              if t.state.is_finished() and t.datetime_complete is not None]
    return sorted(trials, key=lambda t: (t.datetime_complete, t.number))


def _reached(value: float, target: float, maximize: bool) -> bool:
    return value >= target if maximize else value <= target


def cost_to_target(study: optuna.Study, fractions: tuple[float, ...] = TARGET_FRACTIONS,
                   trials: Sequence[Any] | None = None) -> pd.DataFrame:
    """One row per fraction: the target value, the first trial that reached it, how many
    trials had finished by then, and the device seconds spent up to and including it.

    Empty when there is no completed trial, or when the best value's sign makes a
    fraction of it meaningless (best <= 0).
    """
    import pandas as pd
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    columns = ["target", "target_value", "trial", "trials_finished", "device_seconds",
               "share_of_total"]
    trials = finished_in_order(study, trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if not complete:
        return pd.DataFrame(columns=columns)
    maximize = study.directions[0] == StudyDirection.MAXIMIZE
    pick = max if maximize else min
    best = pick(t.values[0] for t in complete)
    if not best > 0 or not math.isfinite(best):
        return pd.DataFrame(columns=columns)
    total = sum(t.user_attrs.get(COST_KEY, 0.0) for t in trials)
    rows = []
    for fraction in fractions:
        target = best * fraction if maximize else best / fraction
        spent, best_so_far = 0.0, None
        for i, trial in enumerate(trials, start=1):
            spent += trial.user_attrs.get(COST_KEY, 0.0)
            if trial.state == TrialState.COMPLETE and trial.values:
                value = trial.values[0]
                best_so_far = value if best_so_far is None else pick(best_so_far, value)
            if best_so_far is not None and _reached(best_so_far, target, maximize):
                rows.append({"target": f"{fraction:.0%} of best", "target_value": target,
                             "trial": trial.number, "trials_finished": i,
                             "device_seconds": spent,
                             "share_of_total": spent / total if total else math.nan})
                break
    return pd.DataFrame(rows, columns=columns)


def cost_per_trial(study: optuna.Study) -> pd.DataFrame:
    """Finished trials in completion order with their cost columns and the running total
    of device seconds."""
    import pandas as pd

    rows = []
    spent = 0.0
    for trial in finished_in_order(study):
        device = trial.user_attrs.get(COST_KEY)
        spent += device or 0.0
        rows.append({"number": trial.number, "state": trial.state.name,
                     "value": trial.values[0] if trial.values else math.nan,
                     **{k: trial.user_attrs.get(k, math.nan) for k in COST_COLUMNS},
                     "cumulative_device_seconds": spent})
    return pd.DataFrame(rows, columns=["number", "state", "value", *COST_COLUMNS,
                                       "cumulative_device_seconds"])


def unmeasured(study: optuna.Study) -> int:
    """Finished trials without a cost record (run before tunetrack measured cost)."""
    return sum(COST_KEY not in t.user_attrs for t in finished_in_order(study))


def cost_figure(study: optuna.Study):
    """Best-so-far of the first objective against cumulative device seconds, with the
    targets marked, as a plotly figure (the report's other plots are plotly too; drawn
    with matplotlib this one took 0.15 s of every study's end); None without a completed
    trial."""
    import plotly.graph_objects as go
    from optuna.study import StudyDirection

    per_trial = cost_per_trial(study)
    done = per_trial[per_trial["state"] == "COMPLETE"]
    if done.empty:
        return None
    maximize = study.directions[0] == StudyDirection.MAXIMIZE
    best = done["value"].cummax() if maximize else done["value"].cummin()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=done["cumulative_device_seconds"], y=best, mode="lines",
                             line={"shape": "hv", "color": "#24324a"},
                             name="best so far"))
    fig.add_trace(go.Scatter(x=per_trial["cumulative_device_seconds"], y=per_trial["value"],
                             mode="markers", marker={"size": 6, "color": "#8a94a6"},
                             name="trials (complete)"))
    for row in cost_to_target(study).itertuples(index=False):
        fig.add_hline(y=row.target_value, line={"dash": "dash", "width": 1,
                                                "color": "#c07000"},
                      annotation_text=f"{row.target}: {row.device_seconds:.1f} s",
                      annotation_position="bottom right")
    fig.update_layout(title="Cost to target", template="plotly_white",
                      xaxis_title="device seconds spent (cumulative, completion order)",
                      yaxis_title=metric_names(study)[0], height=380)
    return fig


def metric_names(study: optuna.Study) -> list[str]:
    """Objective names: Optuna's own, else the study file's (kept in the user attrs)."""
    names = getattr(study, "metric_names", None)
    if names:
        return [str(n) for n in names]
    search = study.user_attrs.get("spec", {}).get("search", {})
    objectives = search.get("objectives") or [{"metric": search.get("metric", "value")}]
    return [str(o.get("metric", f"value {i}")) for i, o in enumerate(objectives)]


def plotly_div(figure, div_id: str, **options) -> str:
    """A plotly figure as a report div: no plotly.js (the page carries it once)."""
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                          default_width="100%", **options,
                          config={"displaylogo": False, "responsive": True})


def table_html(frame: pd.DataFrame, classes: str) -> str:
    """A report table: numbers to 4 significant digits, "-" for a missing value."""
    return frame.to_html(index=False, na_rep="-", border=0, classes=classes,
                         float_format=lambda v: f"{v:.4g}")


def cost_section_html(study: optuna.Study) -> str:
    """The report's cost section: cost to target table, its plot, cost per trial."""
    head = '<section id="cost"><h2>Cost</h2>'
    per_trial = cost_per_trial(study)
    if per_trial.empty:
        return head + '<p class="note">No finished trial yet.</p></section>'
    parts = [f"<p>Device seconds = training + evaluation time of a trial; summed over "
             f"every finished trial (pruned and failed ones too) in completion order. "
             f"Target: within a fraction of the final best {html.escape(metric_names(study)[0])}"
             f"{' (first objective)' if len(study.directions) > 1 else ''}.</p>"]
    targets = cost_to_target(study)
    if targets.empty:
        parts.append('<p class="note">No cost to target: no completed trial with a '
                     'positive best value.</p>')
    else:
        parts.append('<h3>Cost to target</h3><div class="scroll">'
                     f'{table_html(targets, "cost-to-target")}</div>')
    figure = cost_figure(study)
    if figure is not None:
        parts.append(f'<figure><div class="plot">{plotly_div(figure, "plot-cost")}</div>'
                     f'<figcaption>Best value so far against the device seconds spent; '
                     f'dashed lines are the targets.</figcaption></figure>')
    missing = unmeasured(study)
    if missing:
        parts.append(f'<p class="note">{missing} finished trial(s) have no cost record '
                     f'(run before tunetrack measured cost); counted as 0 s.</p>')
    parts.append('<h3>Cost per trial</h3><div class="scroll">'
                 f'{table_html(per_trial, "cost-per-trial")}</div>')
    return head + "".join(parts) + "</section>"
