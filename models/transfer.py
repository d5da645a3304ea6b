"""Transfer learning: a torchvision backbone, a new linear head, and frozen early stages.

`model.family: torchvision` builds one of `BACKBONES` with `weights=None` and then loads
the pretrained weights itself, from a local file or from torchvision's cache only, so that
nothing is ever downloaded and every mismatch is an error that names the keys. Each
backbone is cut into *stages* (the table is in the README, `stages()` computes it and
`choices.BACKBONE_STAGES` names them for the torch-free validator): every
pretrained parameter belongs to exactly one stage, and only the new head belongs to none,
so `freeze = len(stages)` is a linear probe.

Frozen stages get `requires_grad=False` (the trainer leaves them out of the optimizer) and
stay in eval mode even while the trainer calls `model.train()`, so their BatchNorm running
statistics keep the pretrained values. `model.backbone_lr_factor` is published as the
backbone's `lr_factor` attribute, which `train.param_groups` turns into its own optimizer
group at `train.lr * factor`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from .choices import (
    PREPROCESSING,
    freeze_problem,
    missing_weights_file,
    weights_for,
    weights_name,
)
from .config import ModelConfig
from .dropout import Dropout
from .errors import TunetrackError, first_line, unknown
from .init_schemes import apply_init

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Stage:
    name: str  # e.g. "layer1"
    modules: tuple[str, ...]  # dotted paths inside the torchvision model


@dataclass(frozen=True)
class Backbone:
    head: str  # dotted path of the final Linear (ImageNet classes) that the new head replaces
    stages: Callable[[nn.Module], list[Stage]]
    min_size: int = 1  # smallest input side (px) the network accepts


def _resnet_stages(net: nn.Module) -> list[Stage]:
    stem = Stage("stem", ("conv1", "bn1", "relu", "maxpool"))
    return [stem, *(Stage(f"layer{i}", (f"layer{i}",)) for i in range(1, 5))]


def _pre_head(net: nn.Module) -> Stage:
    """Everything of torchvision's `classifier` before its last Linear (fc6/fc7, LayerNorm)."""
    names = [name for name, _ in net.classifier.named_children()][:-1]
    return Stage("pre_head", tuple(f"classifier.{n}" for n in names))


def _group(name: str, indices: Sequence[int]) -> Stage:
    return Stage(name, tuple(f"features.{i}" for i in indices))


def _vgg_stages(net: nn.Module) -> list[Stage]:
    """One stage per conv block: the layers up to and including each MaxPool2d."""
    stages, block = [], []
    for index, layer in enumerate(net.features):
        block.append(index)
        if isinstance(layer, nn.MaxPool2d):
            stages.append(_group(f"block{len(stages) + 1}", block))
            block = []
    return [*stages, _pre_head(net)]


def _efficientnet_stages(net: nn.Module) -> list[Stage]:
    """`features` children as they are: stem, the 7 MBConv stages of the paper, 1x1 conv."""
    last = len(net.features) - 1
    return [_group("stem", [0]), *(_group(f"stage{i}", [i]) for i in range(1, last)),
            _group("head_conv", [last])]


def _mobilenet_v3_small_stages(net: nn.Module) -> list[Stage]:
    """`features` children grouped by output resolution (1/2, 1/4, 1/8, 1/16, 1/32)."""
    groups = [[0], [1], [2, 3], [4, 5, 6, 7, 8], [9, 10, 11, 12]]
    return [_group("stem", groups[0]), *(_group(f"stage{i}", g) for i, g in
                                         enumerate(groups[1:], 1)), _pre_head(net)]


def _convnext_stages(net: nn.Module) -> list[Stage]:
    """Stem, then each stage together with the down-sampling layer in front of it."""
    groups = [[1], [2, 3], [4, 5], [6, 7]]
    return [_group("stem", [0]), *(_group(f"stage{i}", g) for i, g in enumerate(groups, 1)),
            _pre_head(net)]


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone("fc", _resnet_stages),
    "resnet34": Backbone("fc", _resnet_stages),
    "resnet50": Backbone("fc", _resnet_stages),
    "vgg11_bn": Backbone("classifier.6", _vgg_stages, min_size=32),
    "vgg16_bn": Backbone("classifier.6", _vgg_stages, min_size=32),
    "efficientnet_b0": Backbone("classifier.1", _efficientnet_stages),
    "mobilenet_v3_small": Backbone("classifier.3", _mobilenet_v3_small_stages),
    "convnext_tiny": Backbone("classifier.2", _convnext_stages, min_size=32),
}


def _spec(name: str) -> Backbone:
    if name not in BACKBONES:
        raise unknown("model.backbone", name, BACKBONES)
    return BACKBONES[name]


def _torchvision_net(name: str) -> nn.Module:
    """The ImageNet-shaped network with torchvision's own random init (never downloads)."""
    from torchvision import models

    return models.get_model(name, weights=None)


def stages(name: str) -> list[Stage]:
    """The freezable stages of backbone `name`, first (input side) to last.

    Stages depend on the structure only, so the network is built on the meta device: no
    memory and no init (vgg's 100M-parameter classifier would take seconds).
    """
    with torch.device("meta"):
        net = _torchvision_net(name)
    return _spec(name).stages(net)


# ---------------------------------------------------------------------------- weights


def _weights_enum(backbone: str, value: str) -> Any | None:
    """The torchvision weights member named by `value`, or None when `value` is a path."""
    member = weights_name(value)
    if member is None:
        return None
    from torchvision.models import get_model_weights

    enum = get_model_weights(backbone)
    names = list(enum.__members__)
    if member not in names:
        raise TunetrackError(
            f"model.weights {value!r} is neither a file nor a weights name of {backbone}; "
            f"names: {', '.join(names)} (or a path to a state_dict file)"
        )
    return enum[member]


def cached_weights_path(weights: Any) -> Path:
    """Where torchvision keeps `weights` once downloaded: <hub dir>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _weights_file(cfg: ModelConfig) -> Path:
    """The file holding `cfg.weights` (a path, or a cached torchvision enum); must exist."""
    value = weights_for(str(cfg.weights), cfg.backbone)
    enum = _weights_enum(cfg.backbone, value)
    if enum is not None:
        path = cached_weights_path(enum)
        if not path.is_file():
            raise TunetrackError(
                f"model.weights {value!r} ({cfg.backbone}) is not in torchvision's cache: "
                f"put the file from {enum.url} at {path} (tunetrack never downloads)"
            )
        return path
    problem = missing_weights_file(value)
    if problem is not None:
        raise TunetrackError(f"model.weights: {problem}")
    return Path(value).expanduser()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, not a torch file, truncated file, ...
        raise TunetrackError(
            f"model.weights: cannot load {path} with torch.load(weights_only=True): "
            f"{first_line(exc)}"
        ) from None
    for key in ("state_dict", "model"):  # common wrappers around the state_dict
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor)
                                               for v in raw.values()):
        raise TunetrackError(f"model.weights: {path} does not hold a state_dict "
                             f"(a mapping of parameter names to tensors)")
    return dict(raw)


def _few(keys: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown}, ..." if len(keys) > n else shown


def load_pretrained(net: nn.Module, cfg: ModelConfig) -> Path:
    """Load `cfg.weights` into `net` (ImageNet-shaped), ignoring the file's classifier head.

    Every other key must match in name and shape; BatchNorm's `num_batches_tracked` may be
    absent (torchvision's older files predate it).
    """
    path = _weights_file(cfg)
    state = _read_state_dict(path)
    head = _spec(cfg.backbone).head + "."
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(head)}
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    problems = [f"{len(keys)} {what} ({_few(keys, n)})" for keys, what, n in (
        (missing, "missing keys", 3), (unexpected, "unexpected keys", 3),
        (shapes, "keys of another shape, file vs model", 2)) if keys]
    if problems:
        raise TunetrackError(
            f"model.weights {path} does not fit backbone {cfg.backbone}: "
            f"{'; '.join(problems)}; is it a file for another architecture?"
        )
    net.load_state_dict(state, strict=False)
    return path


# ------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preset:
    """Input statistics and size a pretrained network expects (its eval transforms)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int  # the transforms' crop size: the side the network was trained on


def preprocessing(cfg: ModelConfig) -> str:
    """`imagenet` or `dataset`: `auto` follows the weights (an enum name means ImageNet)."""
    if cfg.preprocess not in PREPROCESSING:
        raise unknown("model.preprocess", cfg.preprocess, PREPROCESSING)
    if cfg.preprocess != "auto":
        return cfg.preprocess
    if cfg.weights is None:
        return "dataset"
    value = weights_for(str(cfg.weights), cfg.backbone)
    return "imagenet" if _weights_enum(cfg.backbone, value) is not None else "dataset"


def preset(cfg: ModelConfig) -> Preset:
    """The preset of the named weights enum, else of the backbone's DEFAULT weights."""
    from torchvision.models import get_model_weights

    value = weights_for(cfg.weights or "", cfg.backbone)
    enum = (_weights_enum(cfg.backbone, value) if value else None) or (
        get_model_weights(cfg.backbone).DEFAULT)
    transforms = enum.transforms()
    mean = tuple(getattr(transforms, "mean", IMAGENET_MEAN))
    std = tuple(getattr(transforms, "std", IMAGENET_STD))
    return Preset(mean, std, int(transforms.crop_size[0]))


def input_statistics(cfg: ModelConfig, mean: Sequence[float] | None,
                     std: Sequence[float] | None) -> tuple[list[float] | None, list[float] | None]:
    """Mean/std for the model's `Normalize`: the preset's (3 channels) or the dataset's.

    With ImageNet statistics a 1-channel input broadcasts against the 3-channel mean/std,
    which is exactly "repeat the gray channel, then normalise as RGB".
    """
    if preprocessing(cfg) == "imagenet":
        found = preset(cfg)
        return list(found.mean), list(found.std)
    return (None if mean is None else list(mean)), (None if std is None else list(std))


# ------------------------------------------------------------------------- network


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class TransferNet(nn.Module):
    """Backbone + new head; gray input becomes RGB, resized to `input_size` when set.

    `train()` keeps the frozen stages in eval mode, so their BatchNorm statistics (and any
    dropout / stochastic depth inside them) stay as they were pretrained.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, frozen: Sequence[str],
                 input_size: int | None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen = list(frozen)  # module paths inside `backbone` (strings: survive copies)
        self.input_size = input_size
        for path in self.frozen:
            self.backbone.get_submodule(path).requires_grad_(False)

    def train(self, mode: bool = True) -> TransferNet:
        super().train(mode)
        if mode:
            for path in self.frozen:
                self.backbone.get_submodule(path).eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grayscale into an RGB backbone: a view, no copy
            x = x.expand(-1, 3, -1, -1)
        size = self.input_size
        if size is not None and (x.shape[-2] != size or x.shape[-1] != size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > size or x.shape[-2] > size)
        return self.head(self.backbone(x))


def _input_side(cfg: ModelConfig, shape: tuple[int, int, int]) -> tuple[int | None, int]:
    """(resize target or None, side the backbone will see); checks the backbone's minimum."""
    target = cfg.input_size
    if target is None and preprocessing(cfg) == "imagenet":
        target = preset(cfg).size
    side = target if target is not None else min(shape[1], shape[2])
    needed = _spec(cfg.backbone).min_size
    if side < needed:
        raise TunetrackError(
            f"model.backbone {cfg.backbone} needs inputs of at least {needed}x{needed} px, it "
            f"would get {side}x{side}: set model.input_size >= {needed} (the model resizes)"
        )
    return target, side


def _check(cfg: ModelConfig, shape: tuple[int, int, int]) -> None:
    if shape[0] not in (1, 3):
        raise TunetrackError(f"model.family torchvision takes 1- or 3-channel images, "
                             f"got {shape[0]} channels")
    cfg.check()  # freeze >= 0, backbone_lr_factor > 0, input_size >= 1, ...
    problem = freeze_problem(cfg.backbone, cfg.freeze)  # the validator's rule, verbatim
    if problem is not None:
        raise TunetrackError(problem)


def build_transfer(cfg: ModelConfig, shape: tuple[int, int, int], n_classes: int, *,
                   pretrained: bool = True) -> TransferNet:
    """The `torchvision` family: backbone, weights, new head, frozen stages, init policy.

    Init policy: with pretrained weights `model.init` applies to the new head only (the
    pretrained layers are never re-drawn); without weights it applies to the whole network,
    and `default` keeps torchvision's own per-architecture init.

    `pretrained=False` builds the same network (same frozen stages, input size and
    preprocessing, all decided from `cfg` alone) without reading `cfg.weights`: for a
    checkpoint, whose state_dict replaces every weight anyway and must still load after the
    pretrained file is gone.
    """
    spec = _spec(cfg.backbone)
    _check(cfg, shape)
    target, _ = _input_side(cfg, shape)
    net = _torchvision_net(cfg.backbone)
    parts = spec.stages(net)
    if cfg.weights is not None and pretrained:
        load_pretrained(net, cfg)
    old_head = net.get_submodule(spec.head)
    linear = nn.Linear(old_head.in_features, n_classes)
    head = nn.Sequential(Dropout(cfg.dropout), linear) if cfg.dropout > 0 else linear
    _set_submodule(net, spec.head, nn.Identity())
    apply_init(head if cfg.weights is not None else nn.ModuleList([net, head]), cfg.init)
    net.lr_factor = cfg.backbone_lr_factor  # read by train.param_groups
    frozen = [path for stage in parts[:cfg.freeze] for path in stage.modules]
    return TransferNet(net, head, frozen, target)
