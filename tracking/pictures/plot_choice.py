"""Which of Optuna's plots a study gets, each with its plotly and matplotlib functions.

The one place that decides it: the parent run's files (`study_plots`), the drawer process
(`plot_drawer`) and `tunetrack report` all ask `plot_list`, so they draw the same plots with
the same seeded importance evaluator.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial

import optuna
from optuna.trial import TrialState

IMPORTANCE_SEED = 0  # fANOVA's random forest: the same trials give the same importances


def plot_list(study: optuna.Study) -> tuple[dict[str, tuple[Callable, Callable | None]],
                                           dict[str, str]]:
    """Plot name -> (plotly function, matplotlib function) for the plots that apply, and
    plot name -> why not for the others."""
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
