"""Tiny study files for tests: digits, a small MLP, a few epochs (trials take < 1 s)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import yaml


def tiny_study(
    name: str = "tiny", *, n_trials: int = 4, max_epochs: int = 3, **overrides: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "dataset": {"name": "digits"},
        "model": {
            "family": "mlp",
            "depth": {"int": [1, 2]},
            "width": {"int": [16, 64], "log": True},
            "activation": {"choice": ["relu", "tanh"]},
        },
        "train": {
            "max_epochs": max_epochs,
            "batch_size": 128,
            "optimizer": {"choice": ["adam", "sgd"]},
            "lr": {"float": [1e-3, 3e-2], "log": True},
            "momentum": {"float": [0.8, 0.95]},
        },
        "search": {
            "n_trials": n_trials,
            "n_startup_trials": 2,
            "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
        },
        "tracking": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def write_study(folder: Path, name: str = "tiny", **kwargs: Any) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_study(name, **kwargs), sort_keys=False))
    return path


def wait_mid_trial(storage: str, name: str, max_epochs: int, timeout: float = 300,
                   user_attr: str | None = None) -> None:
    """Return once a trial has completed and the running one has reported at least one and
    at most half of its `max_epochs` epochs (and has `user_attr`, when given): a signal sent
    now lands inside that trial, not in the gap between two trials (which "the last trial
    is RUNNING" alone allowed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except Exception:  # the study may not exist yet
            continue
        if not trials:
            continue
        done = any(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        last = trials[-1]
        if (done and last.state == optuna.trial.TrialState.RUNNING
                and 1 <= len(last.intermediate_values) <= max_epochs // 2
                and (user_attr is None or user_attr in last.user_attrs)):
            return
    raise AssertionError(f"no trial of {name} was mid-way within {timeout:.0f} s")
