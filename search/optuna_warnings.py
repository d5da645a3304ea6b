"""Optuna's `ExperimentalWarning`, silenced in one scoped place.

tunetrack uses features Optuna still marks experimental (TPE `group`, QMC, `PatientPruner`,
heartbeats, the stale-trial retry callback, `fail_stale_trials`, `set_metric_names`); the
warning tells a tunetrack user nothing they could act on. `warnings.catch_warnings`
restores the filters on exit, so the caller's own warning settings are never changed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import optuna


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Run the block without Optuna's experimental-feature warnings (only those)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
