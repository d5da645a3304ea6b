"""Weight-initialisation schemes, applied to every Linear/Conv layer by one function.

He (Kaiming) init uses the gain of the network's activation, as He et al. derive it;
Xavier (Glorot) and orthogonal use gain 1, their textbook form. Biases start at zero for
every non-default scheme so that only the weight distribution differs between schemes.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .errors import unknown

_KAIMING_NONLINEARITY = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh",
                         "sigmoid": "sigmoid", "gelu": "relu", "silu": "relu", "elu": "relu"}
LEAKY_SLOPE = 0.01


def _kaiming(fn: Callable, activation: str) -> Callable[[nn.Parameter], None]:
    nonlinearity = _KAIMING_NONLINEARITY.get(activation, "relu")
    return lambda w: fn(w, a=LEAKY_SLOPE, mode="fan_in", nonlinearity=nonlinearity)


INIT_SCHEMES: dict[str, Callable[[str], Callable[[nn.Parameter], None] | None]] = {
    "default": lambda act: None,
    "xavier_uniform": lambda act: nn.init.xavier_uniform_,
    "xavier_normal": lambda act: nn.init.xavier_normal_,
    "kaiming_uniform": lambda act: _kaiming(nn.init.kaiming_uniform_, act),
    "kaiming_normal": lambda act: _kaiming(nn.init.kaiming_normal_, act),
    "orthogonal": lambda act: nn.init.orthogonal_,
}


def apply_init(module: nn.Module, scheme: str, activation: str = "relu") -> nn.Module:
    """Re-initialise every Linear/Conv weight of `module` in place; returns `module`."""
    if scheme not in INIT_SCHEMES:
        raise unknown("init scheme", scheme, INIT_SCHEMES)
    init = INIT_SCHEMES[scheme](activation)
    if init is None:
        return module
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            init(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module
