"""Rich progress bars: one for the study (trials finished, pruned, best so far, ETA) and one
for the running trial's epochs, so a ten-minute transfer-learning trial does not look
frozen.

Shown only where someone watches: a terminal or a notebook. In a log file, `docker logs`
or CI output the bars are off (rich would otherwise print frames or nothing useful).
"""

from __future__ import annotations

import contextlib
import time

import optuna
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_STATE = optuna.trial.TrialState
_FINISHED = (_STATE.COMPLETE, _STATE.PRUNED)


def watched(console: Console) -> bool:
    """Whether bars are worth drawing on `console`: a terminal or a Jupyter notebook."""
    return console.is_terminal or console.is_jupyter


class StudyProgress:
    """Context manager, Optuna callback and source of per-trial epoch callbacks.

    `shared=True` counts the study's finished trials, every worker's (`tunetrack worker`,
    `run --workers N`); otherwise only the trials this process runs. `done` trials are
    already finished when the bar starts.
    """

    def __init__(self, study_name: str, total: int, *, done: int = 0, shared: bool = False,
                 console: Console | None = None, enabled: bool | None = None):
        console = console or Console(stderr=True)
        self.enabled = watched(console) if enabled is None else enabled
        self.shared = shared
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.enabled,
        )
        self.task = self.progress.add_task(study_name, total=total, completed=done,
                                           detail="trials")
        self.pruned = 0
        self._epochs: TaskID | None = None
        self._polled = 0.0

    def __enter__(self) -> StudyProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    # ---- the study ---------------------------------------------------------------------

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: one more finished trial (or the study's count when shared)."""
        self.pruned += trial.state == _STATE.PRUNED
        self._drop_epochs()
        self.update(study, advance=0 if self.shared else 1)

    def update(self, study: optuna.Study, advance: int = 0) -> None:
        trials = study.get_trials(deepcopy=False)
        pruned = sum(t.state == _STATE.PRUNED for t in trials) if self.shared else self.pruned
        best = "-"
        if len(study.directions) == 1:
            with contextlib.suppress(ValueError):
                best = f"{study.best_value:.4f} (#{study.best_trial.number})"
        else:
            best = f"{len(study.best_trials)} on the Pareto front"
        fields = {"detail": f"trials, {pruned} pruned, best {best}"}
        if self.shared:
            finished = sum(t.state in _FINISHED for t in trials)
            self.progress.update(self.task, completed=finished, **fields)
        else:
            self.progress.update(self.task, advance=advance, **fields)

    def poll(self, load_study, every_s: float = 1.0) -> None:
        """For a parent that runs no trials itself (`run --workers N`): re-read the study
        from storage at most every `every_s` seconds. `load_study()` returns the study or
        raises KeyError while no worker has created it yet."""
        if not self.enabled or time.monotonic() - self._polled < every_s:
            return
        self._polled = time.monotonic()
        with contextlib.suppress(KeyError):
            self.update(load_study())

    # ---- the running trial's epochs -------------------------------------------------------

    def for_trial(self, number: int, max_epochs: int) -> EpochBar:
        """Trainer callback advancing a bar for trial `number`'s epochs."""
        self._drop_epochs()
        self._epochs = self.progress.add_task(f"  trial {number}", total=max_epochs,
                                              detail="epochs")
        return EpochBar(self.progress, self._epochs)

    def _drop_epochs(self) -> None:
        if self._epochs is not None:
            self.progress.remove_task(self._epochs)
            self._epochs = None


class EpochBar:
    """`on_epoch_end` for the trainer: moves the trial's bar, never asks to stop."""

    def __init__(self, progress: Progress, task: TaskID):
        self.progress, self.task = progress, task

    def on_epoch_end(self, result) -> bool:
        self.progress.update(self.task, completed=result.epoch + 1,
                             detail=f"epochs, val_loss {result.val_loss:.3f} "
                                    f"val_acc {result.val_accuracy:.3f}")
        return False
