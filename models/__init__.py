"""Pure PyTorch: datasets, networks, init schemes and the trainer.

This package imports neither Optuna nor MLflow; `search` and `tracking` plug into the
trainer through `EpochCallback`. Names are loaded lazily so that importing the light
modules (`config`, `choices`, `errors`) never pulls in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ACTIVATIONS": "choices", "BACKBONES": "choices", "DATASETS": "choices",
    "FAMILIES": "choices", "INIT_SCHEMES": "choices", "MONITORS": "choices",
    "OPTIMIZERS": "choices", "PREPROCESSING": "choices", "SCHEDULERS": "choices",
    "AugmentConfig": "config", "DataConfig": "config", "EarlyStoppingConfig": "config",
    "ModelConfig": "config", "TrainConfig": "config", "TrialConfig": "config",
    "Split": "data", "Splits": "data", "load_splits": "data",
    "resolve_device": "device",
    "TunetrackError": "errors",
    "apply_init": "init_schemes",
    "ClassificationReport": "metrics", "classification_metrics": "metrics",
    "Classifier": "nets", "count_parameters": "nets", "create": "nets",
    "EpochCallback": "trainer_core", "EpochResult": "trainer_core",
    "FitResult": "trainer_core", "Evaluation": "train", "Trainer": "train",
    "param_groups": "optimizers",
    "TransferNet": "transfer", "build_transfer": "transfer", "stages": "transfer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
