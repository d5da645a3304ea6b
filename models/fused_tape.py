"""The backward pass of a fused MLP group written out, without autograd.

A fused group of small MLPs spends much of its step in autograd's machinery (a node per
operation, an `AccumulateGrad` add per gradient, the forward's product order), not in
arithmetic. `FusedNet.train_step` runs the forward under `no_grad`, each layer appending its
backward (a closure) to a *tape*, then runs the tape in reverse: a Linear writes g^T h and
the sum of g straight into its `flat_grad` slices; the other layers call the kernels
autograd calls (`threshold_backward`, `native_batch_norm_backward`, ...), so the gradients
are autograd's up to summation order (368-379 vs 501-546 us for a step of 8 width-64
digits MLPs, bench/README.md). Only MLP bodies (Flatten, Linear, BatchNorm1d, Dropout and
the activations below) without autocast run on the tape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

aten = torch.ops.aten

# one backward step: the gradient with respect to a layer's output -> with respect to its
# input (None for the first Linear, whose input is the shared batch)
Backward = Callable[[torch.Tensor], torch.Tensor | None]
# dL/d(output) -> dL/d(input) of an activation, given its input x and output y
ActivationGrad = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def activation_grad(layer: nn.Module) -> ActivationGrad | None:
    """The backward of an elementwise activation module, as autograd computes it; None
    for a layer that is not one of them."""
    if isinstance(layer, nn.ReLU):
        return lambda g, x, y: aten.threshold_backward(g, y, 0)
    if isinstance(layer, nn.LeakyReLU):
        slope = layer.negative_slope
        return lambda g, x, y: aten.leaky_relu_backward(g, x, slope, False)
    if isinstance(layer, nn.GELU):
        approximate = layer.approximate
        return lambda g, x, y: aten.gelu_backward(g, x, approximate=approximate)
    if isinstance(layer, nn.Tanh):
        return lambda g, x, y: aten.tanh_backward(g, y)
    if isinstance(layer, nn.Sigmoid):
        return lambda g, x, y: aten.sigmoid_backward(g, y)
    if isinstance(layer, nn.SiLU):
        return lambda g, x, y: aten.silu_backward(g, x)
    if isinstance(layer, nn.ELU):
        alpha = layer.alpha
        return lambda g, x, y: aten.elu_backward(g, alpha, 1, 1, False, x)
    return None


def tapeable(body: nn.Sequential) -> bool:
    """Can `FusedNet.train_step` run this member body (see the module docstring)?"""
    layers = list(body)
    if not layers or not isinstance(layers[0], nn.Flatten):
        return False
    return all(type(layer) in (nn.Linear, nn.BatchNorm1d) or isinstance(layer, nn.Dropout)
               or activation_grad(layer) is not None for layer in layers[1:])


def run_backward(tape: list[Backward], grad: torch.Tensor) -> None:
    """Run a forward's tape in reverse from the gradient with respect to its output."""
    for backward in reversed(tape):
        grad = backward(grad)
