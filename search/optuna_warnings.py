"""Optuna's warnings: shown only with -vv.

tunetrack uses features Optuna still marks experimental (TPE `group`, QMC, `PatientPruner`,
heartbeats, the stale-trial retry callback, `fail_stale_trials`, `set_metric_names`), and
Optuna warns about what it draws ("Param x unique value length is less than 2" for a
contour over a parameter that took one value) and samples; none of it is anything a
tunetrack user could act on, and it came as lines between tunetrack's own. Two places:
`quiet_experimental` for a block (`warnings.catch_warnings` restores the filters on exit,
so a caller's own settings are kept), `optuna_log_level` for a command's process. The
plot drawing processes do the same in `tracking.pictures.plot_png.quiet_optuna_logs`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import optuna

from .optuna_internals import optimize_logger


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Run the block without Optuna's experimental-feature warnings (only those)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def optuna_log_level(level: int) -> None:
    """Optuna's logging and Python warnings in this process, for the command's library
    `level`: INFO (-vv) shows all of it; WARNING or ERROR (-q) keeps Optuna's errors only,
    and its "Trial N failed ... because of the following error" at `level`: that is where
    a failed trial's traceback is shown."""
    shown = level <= logging.INFO
    optuna.logging.set_verbosity(level if shown else logging.ERROR)
    optimize_logger().setLevel(logging.NOTSET if shown else level)
    if not shown:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", module=r"optuna(\.|$)")
