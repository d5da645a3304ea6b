"""Tiny study files for tests: digits, a small MLP, a few epochs (trials take < 1 s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
