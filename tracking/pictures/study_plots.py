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
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from tunetrack.models.errors import first_line

from .. import tags as T
from .plot_png import png_of, png_or_why, study_copy

if TYPE_CHECKING:
    from .plot_drawer import PlotDrawer

_log = logging.getLogger(__name__)


IMPORTANCE_SEED = 0  # fANOVA's random forest: the same trials give the same importances


@dataclass
class StudySummary:
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # plot -> reason
    figures: dict[str, Any] = field(default_factory=dict)  # plot -> its plotly figure


def plot_list(study: optuna.Study) -> tuple[dict[str, tuple[Callable, Callable | None]],
                                           dict[str, str]]:
    """Plot name -> (plotly function, matplotlib function) for the plots that apply, and
    plot name -> why not for the others. The one place that decides which Optuna plots a
    study gets: the parent run's files and `tunetrack report` both use it."""
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    evaluator = _importance_evaluator()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = {name for trial in complete for name in trial.params}
    reported = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    skipped: dict[str, str] = {}
    plots: dict[str, tuple[Callable, Callable | None]] = {}
    multi = len(study.directions) > 1
    single = {
        "optimization_history": (vis.plot_optimization_history,
                                  vis_mpl.plot_optimization_history),
        "param_importances": (partial(vis.plot_param_importances, evaluator=evaluator),
                              partial(vis_mpl.plot_param_importances, evaluator=evaluator)),
        # HTML only, as contour and rank: their matplotlib twins took 0.70 s and 1.43 s for
        # the 30-trial digits study against 0.04 s and 0.11 s for plotly (bench.figure_costs,
        # 2026-12-07, AMD EPYC Zen 4 VM), four fifths of what the study process waited for
        # after its last trial
        "parallel_coordinate": (vis.plot_parallel_coordinate, None),
        "slice": (vis.plot_slice, None),
    }
    for name, funcs in single.items():
        if multi:
            skipped[name] = "multi-objective study (see pareto_front)"
        elif not complete:
            skipped[name] = "no completed trial"
        elif name == "param_importances" and len(complete) < 2:
            skipped[name] = "needs at least 2 completed trials"
        elif name == "param_importances" and len(searched) < 2:
            skipped[name] = "needs at least 2 searched parameters"
        else:
            plots[name] = funcs
    plots.update(_grid_plots(study, complete, multi, skipped, evaluator))
    if study.get_trials(deepcopy=False):  # when each trial ran, and how it ended
        plots["timeline"] = (vis.plot_timeline, vis_mpl.plot_timeline)
    if reported:
        plots["intermediate_values"] = (vis.plot_intermediate_values,
                                        vis_mpl.plot_intermediate_values)
    else:
        skipped["intermediate_values"] = "no trial reported intermediate values"
    if multi:
        if len(study.directions) in (2, 3) and complete:
            plots["pareto_front"] = (vis.plot_pareto_front, vis_mpl.plot_pareto_front)
        else:
            skipped["pareto_front"] = "needs 2 or 3 objectives and a completed trial"
    return plots, skipped


GRID_PARAMS = 3  # contour and rank draw every pair: 3 parameters, 3 x 3 panels


def _importance_evaluator():
    """Seeded fANOVA that computes each question once: the contour/rank ranking and both
    importance plots ask the same one (0.2-0.4 s each for 30 digits trials)."""
    from optuna.importance import BaseImportanceEvaluator, FanovaImportanceEvaluator

    class OnceEach(BaseImportanceEvaluator):
        def __init__(self) -> None:
            self._fanova = FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
            self._answers: dict[tuple, dict[str, float]] = {}

        def evaluate(self, study, params=None, *, target=None):
            key = (tuple(params) if params is not None else None, target)
            if key not in self._answers:
                self._answers[key] = self._fanova.evaluate(study, params=params,
                                                           target=target)
            return dict(self._answers[key])

    return OnceEach()


def _grid_plots(study: optuna.Study, complete: list, multi: bool, skipped: dict[str, str],
                evaluator) -> dict[str, tuple[Callable, Callable | None]]:
    """Contour and rank plots of the GRID_PARAMS most important parameters (single
    objective): how pairs of parameters shape the objective.

    HTML only: Optuna's matplotlib twins took 6.1 s (contour) and 3.3 s (rank) for 30
    trials against 0.4 s and 0.5 s for plotly (2026-12-01, 2-vCPU Intel VM), and every
    worker draws the plots again when it finishes."""
    import optuna.visualization as vis

    names = ("contour", "rank")
    searched = sorted({name for trial in complete for name in trial.params})
    why = ("multi-objective study" if multi else "no completed trial" if not complete
           else "needs at least 2 searched parameters" if len(searched) < 2 else None)
    if why is not None:
        skipped.update(dict.fromkeys(names, why))
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranked = list(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except Exception:  # too few trials for the importance model: any parameters will do
        ranked = searched
    params = ranked[:GRID_PARAMS]
    return {name: (partial(getattr(vis, f"plot_{name}"), params=params), None)
            for name in names}


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
