"""Networks for image classification, built by name from a `ModelConfig`.

A `name -> builder` registry (as timm does) keeps `create` open to new families. Every
network is wrapped in `Classifier`, which normalises raw [0, 1] pixels with the train
split's statistics (pretrained torchvision backbones: their weights' own), so a saved
model needs no separate preprocessing step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .choices import POOLS
from .config import ModelConfig
from .dropout import Dropout, Dropout2d
from .errors import unknown
from .init_schemes import LEAKY_SLOPE, apply_init
from .user_code import UserCodeError, call_user, plugin_names, plugin_path

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE),
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise unknown("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


class Normalize(nn.Module):
    """(x - mean) / std per channel, with the statistics stored as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Normalisation + body: takes raw pixels (N, C, H, W) in [0, 1], returns logits."""

    def __init__(self, normalize: Normalize, body: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))


def _mlp(cfg: ModelConfig, shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = shape[0] * shape[1] * shape[2]
    for _ in range(cfg.depth):
        layers.append(nn.Linear(fan_in, cfg.width, bias=not cfg.batch_norm))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(cfg.width))
        layers.append(activation(cfg.activation))
        if cfg.dropout > 0:
            layers.append(Dropout(cfg.dropout))
        fan_in = cfg.width
    layers.append(nn.Linear(fan_in, n_classes))
    return nn.Sequential(*layers)


def _channels(cfg: ModelConfig, block: int) -> int:
    return min(1024, round(cfg.width * cfg.width_multiplier**block))


def _conv_bn_act(cin: int, cout: int, cfg: ModelConfig, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, cfg.kernel_size, stride=stride, padding=cfg.kernel_size // 2,
                     bias=not cfg.batch_norm)
    return [conv, *([nn.BatchNorm2d(cout)] if cfg.batch_norm else []), activation(cfg.activation)]


def _cnn(cfg: ModelConfig, shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """Conv blocks (conv-BN-act, then 2x down-sampling while the map is >= 2 px), FC head."""
    if cfg.pool not in POOLS:
        raise unknown("pool", cfg.pool, POOLS)
    layers: list[nn.Module] = []
    cin, size = shape[0], min(shape[1], shape[2])
    for block in range(cfg.depth):
        cout = _channels(cfg, block)
        down = size >= 2
        stride = 2 if down and cfg.pool == "none" else 1
        layers += _conv_bn_act(cin, cout, cfg, stride)
        if down and cfg.pool != "none":
            layers.append(nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2))
        if cfg.dropout > 0:
            layers.append(Dropout2d(cfg.dropout))
        size = size // 2 if down else size
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if cfg.dropout > 0:
        layers.append(Dropout(cfg.dropout))
    layers.append(nn.Linear(cin, n_classes))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: ModelConfig):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_act(cin, cout, cfg, stride),
            nn.Conv2d(cout, cout, cfg.kernel_size, padding=cfg.kernel_size // 2,
                      bias=not cfg.batch_norm),
            *([nn.BatchNorm2d(cout)] if cfg.batch_norm else []),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        self.act = activation(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _resnet(cfg: ModelConfig, shape: tuple[int, int, int], n_classes: int) -> nn.Module:
    """A small ResNet for small images: stem, `depth` stages of one block, global pool."""
    layers: list[nn.Module] = _conv_bn_act(shape[0], cfg.width, cfg)
    cin, size = cfg.width, min(shape[1], shape[2])
    for stage in range(cfg.depth):
        cout = _channels(cfg, stage)
        stride = 2 if stage > 0 and size >= 2 else 1
        layers.append(BasicBlock(cin, cout, stride, cfg))
        size, cin = size // stride, cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if cfg.dropout > 0:
        layers.append(Dropout(cfg.dropout))
    layers.append(nn.Linear(cin, n_classes))
    return nn.Sequential(*layers)


def _torchvision(cfg: ModelConfig, shape: tuple[int, int, int], n_classes: int, *,
                 pretrained: bool = True) -> nn.Module:
    """A pretrained torchvision backbone with a new head (see `transfer`)."""
    from .transfer import build_transfer  # torchvision is imported only when used

    return build_transfer(cfg, shape, n_classes, pretrained=pretrained)


FAMILIES: dict[str, Callable[[ModelConfig, tuple[int, int, int], int], nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet": _resnet,
    "torchvision": _torchvision,
}


def model_path(cfg: ModelConfig) -> str | None:
    """The import path of the user's network (`model.class_path`, or a plugin's family),
    None for a built-in family."""
    if cfg.class_path:
        return cfg.class_path
    return None if cfg.family in FAMILIES else plugin_path("model", cfg.family)


def user_network(cfg: ModelConfig, path: str, shape: tuple[int, int, int],
                 n_classes: int) -> nn.Module:
    """The user's callable called with `model.init_args`, plus `num_classes` and `in_shape`
    where its signature names them; whatever it raises fails the trial, not the study."""
    where = "model.class_path" if cfg.class_path else "model.family"
    net = call_user(path, where, cfg.init_args, {"num_classes": n_classes, "in_shape": shape})
    if not isinstance(net, nn.Module):
        raise UserCodeError(f"{where} {path} returned a {type(net).__name__}, not an "
                            f"nn.Module")
    return net


def create(cfg: ModelConfig, input_shape: Sequence[int], n_classes: int,
           mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
           seed: int | None = None, *, pretrained: bool = True) -> Classifier:
    """Build the network named by `cfg.family`, initialised with `cfg.init`.

    `seed` makes the initial weights reproducible without touching global RNG state
    of the caller beyond this call. `pretrained=False` skips reading `model.weights`
    (torchvision family) but keeps everything else, normalisation included: the architecture
    for a state_dict that will overwrite every weight.
    """
    user_path = model_path(cfg)
    if user_path is None and cfg.family not in FAMILIES:
        raise unknown("model family", cfg.family, [*FAMILIES, *plugin_names("model")])
    activation(cfg.activation)  # validate before building anything
    cfg.check()
    shape = tuple(int(s) for s in input_shape)
    channels = shape[0]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)  # the CPU one builds weights
        if user_path is not None:
            body = apply_init(user_network(cfg, user_path, shape, n_classes), cfg.init,
                              cfg.activation)
        elif cfg.family == "torchvision":
            # a pretrained backbone applies `init` itself (to the head only when it has
            # weights) and brings its own input statistics (ImageNet weights: ImageNet's)
            from .transfer import input_statistics

            body = _torchvision(cfg, shape, n_classes, pretrained=pretrained)
            mean, std = input_statistics(cfg, mean, std)
        else:
            body = apply_init(FAMILIES[cfg.family](cfg, shape, n_classes), cfg.init,
                              cfg.activation)
    return Classifier(Normalize(mean or [0.0] * channels, std or [1.0] * channels), body)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
