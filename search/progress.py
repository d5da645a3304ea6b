"""A rich progress bar for a study: trials done, pruned, best value so far, ETA."""

from __future__ import annotations

import contextlib

import optuna
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_STATE = optuna.trial.TrialState


class StudyProgress:
    """Context manager + Optuna callback; counts only the trials this process runs."""

    def __init__(self, study_name: str, total: int):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} trials"),
            TextColumn("{task.fields[pruned]} pruned"),
            TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        self.task = self.progress.add_task(study_name, total=total, pruned=0, best="-")
        self.pruned = 0

    def __enter__(self) -> StudyProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.pruned += trial.state == _STATE.PRUNED
        best = "-"
        if len(study.directions) == 1:
            with contextlib.suppress(ValueError):
                best = f"{study.best_value:.4f} (#{study.best_trial.number})"
        else:
            best = f"{len(study.best_trials)} on Pareto front"
        self.progress.update(self.task, advance=1, pruned=self.pruned, best=best)
