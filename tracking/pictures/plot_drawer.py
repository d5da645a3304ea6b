"""A second process that draws the dearest of the study's PNG plots beside the helper.

After a study's last trial, its record waits for the study's plots, most of which is
Optuna's matplotlib twins (`bench.figure_costs`), and the helper cannot draw two plots at
once (matplotlib holds the GIL). The study process is idle by then, so a core is free: the
helper starts this process once its own warm-up is done (`PlotDrawer.start`, only with two
or more cores), it imports matplotlib and Optuna's plots and draws each plot type once
then, and when the study's `finish_study` arrives it draws the PNGs of `ASIDE` while the
helper writes the last trial's files and draws the rest, the HTML files and the report.

How: `python -m tunetrack.tracking.pictures.plot_drawer`, started with `subprocess` like the
helper; one pickled request `(names, trials, directions)` on stdin, one pickled answer
`{name: PNG bytes or "why not"}` on stdout. It exits when its stdin closes, so it never
outlives the helper. A drawer that is gone is not an error: the helper draws everything.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from typing import Any

_log = logging.getLogger(__name__)
# the study's PNG twins, importances included (drawn with the same seeded fANOVA as the
# helper's plotly twin, so the same numbers): 0.83 s for the 30-trial digits study without
# the importances and 0.28 s more with them, against what the helper does meanwhile: the
# last trial's files (0.46-0.7 s), every plotly figure (0.85 s) and the report (0.3 s)
# (bench.figure_costs, 2026-12-08, AMD EPYC Zen 3 VM)
ASIDE = ("intermediate_values", "timeline", "optimization_history", "param_importances")
ANSWER_TIMEOUT_S = 120.0


class PlotDrawer:
    """The helper's end of the drawer process."""

    def __init__(self, proc: subprocess.Popen):
        self._proc = proc
        self._asked = False  # a request whose answer has not been read yet

    @classmethod
    def start(cls) -> PlotDrawer | None:
        """A drawer, or None when this machine has one core (nothing to draw beside) or is
        Windows (`collect` waits on the pipe with `select`, which needs POSIX pipes)."""
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
        if cores < 2 or os.name == "nt":
            return None
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tunetrack.tracking.pictures.plot_drawer"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            _log.info("no plot drawer process (%s): the helper draws every plot", exc)
            return None
        return cls(proc)

    def submit(self, names: list[str], trials: list, directions: list[str]) -> bool:
        """Ask for the PNGs of `names`; False when the drawer is gone (draw them here). An
        earlier answer nobody collected (its study's drawing failed) is read first."""
        if self._asked and self.collect() is None:
            return False
        try:
            pickle.dump((names, trials, directions), self._proc.stdin,
                        protocol=pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
        except (OSError, ValueError):
            return False
        self._asked = True
        return True

    def collect(self, timeout: float = ANSWER_TIMEOUT_S) -> dict[str, bytes | str] | None:
        """The answer to the last `submit`: name -> PNG bytes, or the reason it failed;
        None when the drawer died meanwhile or has not answered within `timeout` (then it
        is stopped: a stuck drawer must not hold up the study's record)."""
        import select

        self._asked = False
        try:
            ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
            if ready:
                return pickle.load(self._proc.stdout)
        except (EOFError, OSError, ValueError, pickle.UnpicklingError):
            return None
        _log.warning("plot drawer gave no answer in %.0f s; drawing the plots here", timeout)
        self._proc.kill()
        return None

    def close(self) -> None:
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()


def draw(names: list[str], trials: list, directions: list[str]) -> dict[str, Any]:
    """Each plot of `names` as PNG bytes, or the one-line reason it could not be drawn:
    the plots `plot_choice.plot_list` gives this study, so the helper's own choice."""
    from .plot_choice import plot_list
    from .plot_png import png_or_why, study_copy

    study = study_copy("drawn", trials, directions)
    plots, skipped = plot_list(study)
    drawn: dict[str, Any] = {}
    for name in names:
        twin = plots[name][1] if name in plots else None  # its matplotlib function
        drawn[name] = (png_or_why(twin, study) if twin is not None
                       else skipped.get(name, "no PNG twin"))
    return drawn


def warm_up_drawing() -> None:
    """Draw each plot of `ASIDE` once for a made-up 4-trial study: the first drawing of a
    plot type in a process loads fonts, builds the mathtext parser and fills matplotlib's
    caches, which made the drawer's share at the end of the digits study 1.46 s instead
    of ~0.9 s."""
    import optuna

    from .plot_png import quiet_optuna_logs

    quiet_optuna_logs()
    made_up = optuna.create_study(direction="maximize",
                                  sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        width = trial.suggest_int("width", 16, 256, log=True)
        act = trial.suggest_categorical("act", ["relu", "gelu"])
        for epoch in range(3):
            trial.report(lr * width / (epoch + 1) + (act == "relu"), epoch)
        return lr * width

    made_up.optimize(objective, n_trials=4)
    draw(list(ASIDE), made_up.trials, ["MAXIMIZE"])


def serve() -> None:
    """Import what drawing needs now (the study is still running), then answer requests
    until stdin closes."""
    import gc
    import signal

    gc.disable()  # while importing (search/startup_gc.py says why)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the study's, as for the helper
    os.nice(5)
    import matplotlib

    matplotlib.use("Agg")
    # what each request needs: `plot_list` names both twins of every plot
    import matplotlib.pyplot
    import optuna.visualization
    import optuna.visualization.matplotlib  # noqa: F401

    warm_up_drawing()
    gc.freeze()  # what is imported stays: the collector need not walk it again
    gc.enable()
    inbox, answers = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            request = pickle.load(inbox)
        except (EOFError, OSError, pickle.UnpicklingError):
            break
        try:
            drawn = draw(*request)
        except Exception as exc:  # e.g. trials it cannot read: the helper draws them all
            _log.warning("plot drawer: %s", exc)
            drawn = {}
        answers.write(pickle.dumps(drawn, protocol=pickle.HIGHEST_PROTOCOL))
        answers.flush()
    os._exit(0)


if __name__ == "__main__":
    serve()
