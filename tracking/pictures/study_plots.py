"""Files of a study for its parent run: Optuna plots, trials.csv, best params / Pareto front.

Each plot is written as interactive HTML (plotly, plotly.js from the CDN so a file is
~10 kB instead of ~4 MB) and, except contour and rank (HTML only, `_grid_plots`), as a
static PNG from Optuna's matplotlib twins (kaleido, which plotly needs for PNGs, is not a
dependency). A plot that does not apply (too few trials,
multi-objective study, nothing reported) is skipped with its reason, never an error.
The dearest PNGs can be drawn by a second process meanwhile (`plot_drawer.py`); both draw
through `plot_png.py`.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from tunetrack.models.errors import first_line

from .. import tags as T
from .plot_choice import plot_list
from .plot_png import png_of, png_or_why, study_copy

if TYPE_CHECKING:
    from .plot_drawer import PlotDrawer

_log = logging.getLogger(__name__)


@dataclass
class StudySummary:
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # plot -> reason
    figures: dict[str, Any] = field(default_factory=dict)  # plot -> its plotly figure


def write_plots(study: optuna.Study, out: Path, drawer: PlotDrawer | None = None, *,
                drawing: bool = False,
                meanwhile: Callable[[StudySummary], object] | None = None) -> StudySummary:
    """The plots that apply into `out`; `drawer` (another process) draws the PNGs of
    `plot_drawer.ASIDE` beside this one (`drawing`: it was given them already). The
    plotly figures are kept in the summary (the report shows them); `meanwhile(summary)`
    is called once they are all made, before the drawer's PNGs are waited for."""
    from .plot_drawer import ASIDE

    plots, skipped = plot_list(study)
    summary = StudySummary(skipped=skipped)
    aside = [n for n in ASIDE if n in plots and plots[n][1] is not None]
    if drawer is not None and not drawing:
        drawing = bool(aside) and drawer.submit(aside, study.get_trials(deepcopy=False),
                                                [d.name for d in study.directions])
    if drawer is None or not drawing:
        drawer, aside = None, []
    pngs: dict[str, bytes | str] = {}
    for name, (plotly_fn, mpl_fn) in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
            try:
                summary.figures[name] = figure = plotly_fn(study)
                figure.write_html(out / f"{name}.html", include_plotlyjs="cdn")
                summary.written.append(f"{name}.html")
                if mpl_fn is not None and name not in aside:
                    pngs[name] = png_of(mpl_fn, study)
            except Exception as exc:  # e.g. importances with a constant parameter
                pngs[name] = f"{type(exc).__name__}: {first_line(exc)}"
    if meanwhile is not None:
        meanwhile(summary)
    if drawer is not None:
        drawn = drawer.collect() or {}
        for name in aside:  # what the drawer could not answer is drawn here
            pngs[name] = drawn[name] if name in drawn else png_or_why(plots[name][1], study)
    for name, png in pngs.items():
        if isinstance(png, str):
            summary.skipped[name] = png
            _log.info("study plot %s skipped: %s", name, png)
        elif name in summary.figures:  # not when its HTML failed
            (out / f"{name}.png").write_bytes(png)
            summary.written.append(f"{name}.png")
    return summary


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """`study.trials_dataframe()` with the MLflow run id of each trial as a column."""
    frame = study.trials_dataframe()
    run_ids = {t.number: t.user_attrs.get(T.ATTR_RUN_ID) for t in study.get_trials(
        deepcopy=False)}
    if len(frame):
        frame.insert(1, "mlflow_run_id", frame["number"].map(run_ids))
    return frame


def pareto_frame(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for trial in study.best_trials:
        row = {"number": trial.number, T.ATTR_RUN_ID: trial.user_attrs.get(T.ATTR_RUN_ID)}
        row.update({f"values_{i}": v for i, v in enumerate(trial.values)})
        row.update({f"params_{k}": v for k, v in trial.params.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def write_study_artifacts(study: optuna.Study, out: Path, drawer: PlotDrawer | None = None,
                          *, drawing: bool = False,
                          meanwhile: Callable[[StudySummary], object] | None = None
                          ) -> StudySummary:
    """Plots, trials.csv and best_params.json (or pareto_front.csv) into `out`; `drawer`,
    `drawing` and `meanwhile`: see `write_plots`."""
    summary = write_plots(study, out, drawer, drawing=drawing, meanwhile=meanwhile)
    trials_frame(study).to_csv(out / "trials.csv", index=False)
    summary.written.append("trials.csv")
    has_complete = bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if len(study.directions) > 1:
        if has_complete:
            pareto_frame(study).to_csv(out / "pareto_front.csv", index=False)
            summary.written.append("pareto_front.csv")
    elif has_complete:
        best = study.best_trial
        (out / "best_params.json").write_text(json.dumps({
            "number": best.number, "value": best.value, "params": best.params,
            T.ATTR_RUN_ID: best.user_attrs.get(T.ATTR_RUN_ID)}, indent=1, default=str))
        summary.written.append("best_params.json")
    return summary


def log_study_summary(client, parent_run_id: str, name: str, trials: list,
                      directions: list[str], folder: Path, skipped: dict[str, str], *,
                      status: str = "FINISHED") -> None:
    """The study's files (drawn into `folder`, removed here), counts and best trial on the
    parent run, which ends `status` unless trials of the study are still running or
    waiting (other workers)."""
    import shutil

    from mlflow.entities import Metric, RunTag

    try:
        client.log_artifacts(parent_run_id, str(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    study = study_copy(name, trials, directions)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    stamp, step = int(time.time() * 1000), counts["complete"]
    metrics = [Metric(f"n_trials_{state}", counts[state], stamp, step)
               for state in ("complete", "pruned", "fail")]
    tags = {T.OPTUNA_DIRECTIONS: ",".join(directions)}
    if skipped:
        tags["tunetrack.plots_skipped"] = T.clip("; ".join(
            f"{k}: {v}" for k, v in skipped.items()))
    if len(directions) == 1 and counts["complete"]:
        best = study.best_trial
        metrics.append(Metric("best_value", float(best.value), stamp, step))
        tags.update({"best.trial_number": str(best.number),
                     "best.run_id": str(best.user_attrs.get(T.ATTR_RUN_ID, ""))})
        # tags, not params: params are immutable and the best changes as workers go on
        tags.update({f"best.{k}": T.clip(str(v)) for k, v in best.params.items()})
    elif counts["complete"]:
        metrics.append(Metric("pareto_front_size", len(study.best_trials), stamp, step))
    client.log_batch(parent_run_id, metrics=metrics,
                     tags=[RunTag(k, v) for k, v in tags.items()])
    if not counts["running"] and not counts["waiting"]:
        client.set_terminated(parent_run_id, status)
