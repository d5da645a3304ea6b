"""What a study spent, and what it spent to get close to its best (`report`, `compare`).

Every trial records its cost as Optuna user attributes (`cost_device_seconds`, ...; see
`tunetrack.models.cost`), so this reads Optuna's storage only, no MLflow.

**Cost to target**: walk the finished trials in completion order, adding up the device
seconds of every one of them (pruned and failed trials spent compute too), and note when
the best-so-far value of the first objective first came within a fraction of the study's
final best: value >= f * best when maximising, value <= best / f when minimising.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from optuna.trial import FrozenTrial

TARGET_FRACTIONS = (0.90, 0.95, 0.99, 1.0)
COST_KEY = "cost_device_seconds"
COST_COLUMNS = ("cost_device_seconds", "cost_wall_seconds", "cost_cpu_seconds",
                "cost_peak_memory_mb", "cost_peak_device_memory_mb", "cost_energy_joules")


def finished_in_order(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials (complete, pruned, failed) by completion time, then number."""
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.state.is_finished() and t.datetime_complete is not None]
    return sorted(trials, key=lambda t: (t.datetime_complete, t.number))


def _reached(value: float, target: float, maximize: bool) -> bool:
    return value >= target if maximize else value <= target


def cost_to_target(study: optuna.Study, fractions: tuple[float, ...] = TARGET_FRACTIONS
                   ) -> pd.DataFrame:
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
    trials = finished_in_order(study)
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


def cost_figure_png(study: optuna.Study) -> bytes | None:
    """Best-so-far of the first objective against cumulative device seconds, with the
    targets marked; None without a completed trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_trial = cost_per_trial(study)
    targets = cost_to_target(study)
    done = per_trial[per_trial["state"] == "COMPLETE"]
    if done.empty:
        return None
    from optuna.study import StudyDirection

    maximize = study.directions[0] == StudyDirection.MAXIMIZE
    best = done["value"].cummax() if maximize else done["value"].cummin()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    ax.step(done["cumulative_device_seconds"], best, where="post", color="#24324a",
            label="best so far")
    ax.scatter(per_trial["cumulative_device_seconds"], per_trial["value"], s=12,
               color="#8a94a6", label="trials (complete)", zorder=3)
    for row in targets.itertuples(index=False):
        ax.axhline(row.target_value, ls="--", lw=0.8, color="#c07000")
        ax.annotate(f"{row.target}: {row.device_seconds:.1f} s",
                    (row.device_seconds, row.target_value), fontsize=8,
                    textcoords="offset points", xytext=(4, -10))
    ax.set_xlabel("device seconds spent (cumulative, completion order)")
    ax.set_ylabel(_first_metric(study))
    ax.set_title("Cost to target")
    ax.legend(loc="lower right" if maximize else "upper right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _first_metric(study: optuna.Study) -> str:
    names = getattr(study, "metric_names", None)
    if names:
        return str(names[0])
    search = study.user_attrs.get("spec", {}).get("search", {})
    objectives = search.get("objectives") or [{"metric": search.get("metric", "value")}]
    return str(objectives[0].get("metric", "value"))


def cost_section_html(study: optuna.Study) -> str:
    """The report's cost section: cost to target table, its plot, cost per trial."""
    head = '<section id="cost"><h2>Cost</h2>'
    per_trial = cost_per_trial(study)
    if per_trial.empty:
        return head + '<p class="note">No finished trial yet.</p></section>'
    parts = [f"<p>Device seconds = training + evaluation time of a trial; summed over "
             f"every finished trial (pruned and failed ones too) in completion order. "
             f"Target: within a fraction of the final best {html.escape(_first_metric(study))}"
             f"{' (first objective)' if len(study.directions) > 1 else ''}.</p>"]
    targets = cost_to_target(study)
    if targets.empty:
        parts.append('<p class="note">No cost to target: no completed trial with a '
                     'positive best value.</p>')
    else:
        parts.append('<h3>Cost to target</h3><div class="scroll">' + targets.to_html(
            index=False, border=0, classes="cost-to-target", na_rep="-",
            float_format=lambda v: f"{v:.4g}") + "</div>")
    png = cost_figure_png(study)
    if png is not None:
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{encoded}" alt="cost to '
                     f'target"><figcaption>Best value so far against the device seconds '
                     f'spent; dashed lines are the targets.</figcaption></figure>')
    missing = unmeasured(study)
    if missing:
        parts.append(f'<p class="note">{missing} finished trial(s) have no cost record '
                     f'(run before tunetrack measured cost); counted as 0 s.</p>')
    parts.append('<h3>Cost per trial</h3><div class="scroll">' + per_trial.to_html(
        index=False, border=0, classes="cost-per-trial", na_rep="-",
        float_format=lambda v: f"{v:.4g}") + "</div>")
    return head + "".join(parts) + "</section>"
