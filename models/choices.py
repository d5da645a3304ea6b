"""Allowed names for every categorical option, importable without torch.

The study-file validator checks names against these before anything heavy is imported
(`tunetrack validate` stays instant); the registries in `nets`, `init_schemes`, `data`,
`train` and `transfer` hold the same keys, which a test asserts. The torchvision family's
rules that the validator needs too (stage names per backbone, "is `model.weights` a file or
a weights name") live here for the same reason, and `transfer` uses them from here.
"""

from __future__ import annotations

import re
from pathlib import Path

DATASETS = ("digits", "imagefolder", "torchvision", "synthetic")
FAMILIES = ("mlp", "cnn", "resnet", "torchvision")
ACTIVATIONS = ("relu", "gelu", "leaky_relu", "tanh", "elu", "silu", "sigmoid")
INIT_SCHEMES = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform",
                "kaiming_normal", "orthogonal")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "step", "exponential", "cosine", "onecycle", "plateau")
MONITORS = ("val_loss", "val_accuracy")
# `search.metric` names computed from the validation split's probabilities (`metrics.SCORES`)
SCORE_DIRECTIONS = {"macro_f1": "maximize", "balanced_accuracy": "maximize",
                    "auroc": "maximize", "log_loss": "minimize"}
POOLS = ("max", "avg", "none")
# family torchvision (models/transfer.py): pretrained backbones and their input statistics
BACKBONES = ("resnet18", "resnet34", "resnet50", "vgg11_bn", "vgg16_bn", "efficientnet_b0",
             "mobilenet_v3_small", "convnext_tiny")
PREPROCESSING = ("auto", "imagenet", "dataset")
# stage names per backbone, input side first: what `model.freeze` counts. `transfer.stages`
# derives them from the real networks; a test asserts both agree.
_RESNET_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
_VGG_STAGES = ("block1", "block2", "block3", "block4", "block5", "pre_head")
_MOBILE_STAGES = ("stem", "stage1", "stage2", "stage3", "stage4", "pre_head")
BACKBONE_STAGES: dict[str, tuple[str, ...]] = {
    "resnet18": _RESNET_STAGES,
    "resnet34": _RESNET_STAGES,
    "resnet50": _RESNET_STAGES,
    "vgg11_bn": _VGG_STAGES,
    "vgg16_bn": _VGG_STAGES,
    "efficientnet_b0": ("stem", *(f"stage{i}" for i in range(1, 8)), "head_conv"),
    "mobilenet_v3_small": _MOBILE_STAGES,
    "convnext_tiny": _MOBILE_STAGES,
}

# study-file field -> allowed names
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset.name": DATASETS,
    "model.family": FAMILIES,
    "model.activation": ACTIVATIONS,
    "model.init": INIT_SCHEMES,
    "model.pool": POOLS,
    "model.backbone": BACKBONES,
    "model.preprocess": PREPROCESSING,
    "train.optimizer": OPTIMIZERS,
    "train.scheduler": SCHEDULERS,
    "train.early_stopping.monitor": MONITORS,
}


def freeze_problem(backbone: str, freeze: int) -> str | None:
    """Why `model.freeze` cannot apply to `backbone` (a known one), or None when it can.

    Shared by the validator and `build_transfer`, so a study is rejected before it starts
    with the very line a trial would fail with.
    """
    names = BACKBONE_STAGES[backbone]
    if freeze > len(names):  # `freeze >= 0` is `ModelConfig.problems`' rule
        return (f"model.freeze {freeze} is too large for backbone {backbone}: it has "
                f"{len(names)} stages ({', '.join(names)}); allowed: 0..{len(names)}")
    return None


# "IMAGENET1K_V1", "DEFAULT" or "ResNet18_Weights.IMAGENET1K_V1": a weights enum member
_WEIGHTS_NAME = re.compile(r"(?:\w+_Weights\.)?([A-Z][A-Z0-9_]*)")


def weights_for(weights: str, backbone: str) -> str:
    """`model.weights` for one backbone: `{backbone}` in a path becomes its name."""
    return weights.replace("{backbone}", backbone)


def weights_name(value: str) -> str | None:
    """The torchvision weights member `value` names (`IMAGENET1K_V1` for
    `ResNet18_Weights.IMAGENET1K_V1`), or None when `value` is a file path.

    An existing file wins over the pattern, so a file saved as `DEFAULT` still loads as a
    file. Whether the member exists for the backbone is only known to torchvision.
    """
    match = _WEIGHTS_NAME.fullmatch(value)
    if match is None or Path(value).exists():
        return None
    return match.group(1)


def missing_weights_file(value: str) -> str | None:
    """Why `value` (one backbone's `model.weights`) cannot be read as a file, or None when
    it is an existing file or a weights name (whose cached file only torch can locate)."""
    if weights_name(value) is not None or Path(value).expanduser().is_file():
        return None
    return (f"{Path(value).expanduser()} is not a file (a state_dict saved with torch.save, "
            f"or a torchvision weights name such as DEFAULT or IMAGENET1K_V1)")
