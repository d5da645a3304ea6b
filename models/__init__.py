"""Pure PyTorch: datasets, networks, init schemes and the trainer.

This package imports neither Optuna nor MLflow; `search` and `tracking` plug into the
trainer through `EpochCallback`.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import (
    AugmentConfig,
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    TrainConfig,
    TrialConfig,
)
from .data import DATASETS, Split, Splits, load_splits
from .device import resolve_device
from .errors import TunetrackError
from .init_schemes import INIT_SCHEMES, apply_init
from .metrics import ClassificationReport, classification_metrics
from .nets import ACTIVATIONS, FAMILIES, Classifier, count_parameters, create
from .train import (
    MONITORS,
    OPTIMIZERS,
    SCHEDULERS,
    EpochCallback,
    EpochResult,
    Evaluation,
    FitResult,
    Trainer,
)

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "FAMILIES",
    "INIT_SCHEMES",
    "MONITORS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "AugmentConfig",
    "ClassificationReport",
    "Classifier",
    "DataConfig",
    "EarlyStoppingConfig",
    "EpochCallback",
    "EpochResult",
    "Evaluation",
    "FitResult",
    "ModelConfig",
    "Split",
    "Splits",
    "TrainConfig",
    "Trainer",
    "TrialConfig",
    "TunetrackError",
    "apply_init",
    "classification_metrics",
    "count_parameters",
    "create",
    "load_checkpoint",
    "load_splits",
    "resolve_device",
    "save_checkpoint",
]
