"""A second process that draws the dearest of the study's PNG plots beside the helper.

After a study's last trial, its record waits for the study's plots, most of which is
Optuna's matplotlib twins (`bench.figure_costs`), and the helper cannot draw two plots at
once (matplotlib holds the GIL). The study process is idle by then, so a core is free: the
helper starts this process once a few trials have ended (`PlotDrawer.start`, only with two
or more cores), it imports matplotlib and Optuna's plots then, and at the end it draws the
PNGs of `ASIDE` while the helper draws the rest, the HTML files and the report.

How: `python -m tunetrack.tracking.plot_drawer`, started with `subprocess` like the
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
# the dearest PNG twins, balanced against what the helper draws meanwhile (the
# parallel coordinates, importances and every plotly figure): each side ~1.1 s for the
# 30-trial digits study (bench/README.md)
ASIDE = ("slice", "intermediate_values", "optimization_history", "timeline")
ANSWER_TIMEOUT_S = 120.0


class PlotDrawer:
    """The helper's end of the drawer process."""

    def __init__(self, proc: subprocess.Popen):
        self._proc = proc

    @classmethod
    def start(cls) -> PlotDrawer | None:
        """A drawer, or None when this machine has one core (nothing to draw beside)."""
        if len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else (
                (os.cpu_count() or 1) < 2):
            return None
        try:
            proc = subprocess.Popen([sys.executable, "-m", "tunetrack.tracking.plot_drawer"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as exc:
            _log.info("no plot drawer process (%s): the helper draws every plot", exc)
            return None
        return cls(proc)

    def submit(self, names: list[str], trials: list, directions: list[str]) -> bool:
        """Ask for the PNGs of `names`; False when the drawer is gone (draw them here)."""
        try:
            pickle.dump((names, trials, directions), self._proc.stdin,
                        protocol=pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
        except (OSError, ValueError):
            return False
        return True

    def collect(self, timeout: float = ANSWER_TIMEOUT_S) -> dict[str, bytes | str] | None:
        """The answer to the last `submit`: name -> PNG bytes, or the reason it failed;
        None when the drawer died meanwhile or has not answered within `timeout` (then it
        is stopped: a stuck drawer must not hold up the study's record)."""
        import select

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
    """Each plot of `names` as PNG bytes, or the one-line reason it could not be drawn."""
    import warnings

    import matplotlib
    import optuna.visualization.matplotlib as vis_mpl

    from tunetrack.models.errors import first_line

    from .study_artifacts import png_of, study_copy

    study = study_copy("drawn", trials, directions)
    drawn: dict[str, Any] = {}
    for name in names:
        with warnings.catch_warnings(), matplotlib.rc_context():  # optuna sets ggplot style
            warnings.simplefilter("ignore")
            try:
                drawn[name] = png_of(getattr(vis_mpl, f"plot_{name}"), study)
            except Exception as exc:
                drawn[name] = f"{type(exc).__name__}: {first_line(exc)}"
    return drawn


def warm_up_drawing(plt) -> None:
    """Draw a throw-away figure with what Optuna's plots use (log axes with mathtext tick
    labels, text, markers): the first drawing of a process loads fonts and builds the
    mathtext parser (a third of the first slice plot's 0.9 s)."""
    import io

    fig, axes = plt.subplots(1, 2, figsize=(4, 2))
    axes[0].scatter([1e-4, 1e-2], [0.5, 0.9], c=[0, 1])
    axes[0].set_xscale("log")
    axes[1].plot([0, 1], [1, 0], marker="o", label="trial")
    axes[1].legend()
    fig.suptitle("warm-up")
    fig.savefig(io.BytesIO(), format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


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
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib  # noqa: F401 (what each request needs)

    warm_up_drawing(plt)
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
