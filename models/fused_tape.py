"""The backward pass of a fused MLP group written out, without autograd.

A fused group of small MLPs spends much of its step in autograd's machinery rather than in
arithmetic: one engine node per operation, an `AccumulateGrad` that adds each gradient into
`flat_grad`, and a product order fixed by the forward's. `FusedNet.train_step` instead runs
the forward under `no_grad`, each layer appending its backward (a closure over what it
needs) to a *tape*, and then runs the tape in reverse: each Linear writes its weight and
bias gradients straight into their slices of `flat_grad`, computing the weight gradient
as g^T h, which lands in the stored [out, in] layout and is the fast product order for a
narrow last layer. The kernels are the ones autograd calls (`threshold_backward`,
`native_batch_norm_backward`, ...), so the gradients are autograd's up to summation order.
For 8 width-64 digits MLPs (batch 64) forward, loss and backward took 368-379 us this way
against 501-546 us through autograd before (bench/README.md).

Which nets: those whose body is a Flatten followed by Linear, BatchNorm1d, Dropout and
the activations below, i.e. the MLP family. Others (convolutions, pooling) train through
autograd, as do groups under autocast (bf16 on CUDA).
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
