"""K networks of one architecture as one batched network (fused trials).

Small classifiers leave a device idle: each step is dominated by per-operation overhead, so
K members run as one set of larger operations instead of K sets of small ones: a Linear is
one `baddbmm` over [K, out, in] weights, a Conv2d one `F.conv2d` with `groups = K` on
[N, K*C, H, W] activations, a BatchNorm one batch-norm over K*C channels (per-member
statistics for free); activations and pooling are shared. A member's dropout masks come
from its own generator, drawn as the unfused `dropout.Dropout` draws them, so it sees the
masks it would see alone (on CPU). The parameters are rows of one tensor
(`fused_stack.MemberStack`); MLP groups train without autograd (`train_step`,
`fused_tape`). Layer by layer: docs/fused_trials.md, "How the model works".
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .dropout import keep_mask
from .errors import TunetrackError
from .fused_fields import FUSABLE_FAMILIES, SHARED_MODEL_FIELDS, cpu_fuse_max_macs, differences
from .fused_stack import MemberStack, Tensors
from .fused_tape import ActivationGrad, Backward, activation_grad, aten, run_backward, tapeable
from .nets import Classifier, create, model_path

_PARAM_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_SHARED_LAYERS = (nn.ReLU, nn.GELU, nn.LeakyReLU, nn.Tanh, nn.ELU, nn.SiLU, nn.Sigmoid,
                  nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)

# Each parameter is a strided slice of `flat`, and its gradient the same slice of `flat_grad`
# on purpose (`fused_stack`); autograd's once-per-process note that such a layout
# "may impair performance" is about other layouts and says nothing useful here.
warnings.filterwarnings("ignore", message=".*gradient layout contract.*")

# Activation layouts between layers: the raw input all members share, per-member channels
# side by side ([N, K*C, H, W]), or per-member vectors ([K, N, F]).
SHARED, IMAGE, VECTOR = "shared", "image", "vector"


def check_fusable(cfg: ModelConfig) -> None:
    if cfg.family not in FUSABLE_FAMILIES:
        raise TunetrackError(f"model.family must be one of {', '.join(FUSABLE_FAMILIES)} to "
                             f"fuse trials but got {cfg.family!r}")


def step_macs(cfg: ModelConfig, input_shape: Sequence[int], n_classes: int,
              batch_size: int) -> int:
    """Multiply-adds of one member's forward pass over a batch (Linear and Conv2d layers),
    counted on a one-image pass through the network `nets.create` builds. Forward hooks,
    not torch's `FlopCounterMode` (the same counts): its first use imports `torch._dynamo`
    (0.8 s on the Intel Xeon VM), which a trial process otherwise never does."""
    net = create(replace(cfg, dropout=0.0), input_shape, n_classes, None, None, seed=0)
    macs = 0

    def count(layer: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        weight = layer.weight
        per_output = weight[0].numel()  # in_features, or Cin/groups * kh * kw
        macs += per_output * output[0].numel()

    hooks = [m.register_forward_hook(count) for m in net.modules()
             if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        net.eval()(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()
    return macs * batch_size


def fusing_pays(cfg: ModelConfig, input_shape: Sequence[int], n_classes: int, batch_size: int,
                device: torch.device) -> bool:
    """Would a fused group of this architecture train faster than its members one by one?
    On accelerators small members leave the device idle: always. On CPU only up to
    `cpu_fuse_max_macs` per member step (`CPU_FUSE_MAX_MACS`; `_USER` for the user's own
    network, whose group gains less there)."""
    if device.type != "cpu":
        return True
    limit = cpu_fuse_max_macs(model_path(cfg) is not None)
    return step_macs(cfg, input_shape, n_classes, batch_size) <= limit


class FusedNet(MemberStack):
    """K members of one architecture; `forward(x)` returns logits [K, N, n_classes].

    Build it with `FusedNet.create`; the storage is `MemberStack`'s, keyed by
    (position among `param_layers`, name). Each member has its dropout rate and generator.
    """

    def __init__(self, members: Sequence[Classifier], dropouts: Sequence[float],
                 seeds: Sequence[int], probe: Classifier, device: torch.device):
        super().__init__(members, probe, device)
        self._probe_layers = param_layers(probe)
        self._rates = list(map(float, dropouts))
        self._gens: list[torch.Generator] = [self._generator(s) for s in seeds]
        self.normalize = copy.deepcopy(members[0].normalize).to(device)
        self.ops = [self._op(layer) for layer in probe.body]
        self.tapeable = tapeable(probe.body)  # `train_step` may run it (fused_tape)

    @classmethod
    def create(cls, configs: Sequence[ModelConfig], seeds: Sequence[int],
               input_shape: Sequence[int], n_classes: int, mean: Sequence[float] | None,
               std: Sequence[float] | None, device: torch.device) -> FusedNet:
        """Each member as `nets.create(cfg, ..., seed)` would build it, stacked."""
        for cfg in configs:
            check_fusable(cfg)
        differ = differences("model", SHARED_MODEL_FIELDS, list(configs))
        if differ:
            raise TunetrackError(f"members of a fused group must share {', '.join(differ)}")
        members = [create(cfg, input_shape, n_classes, mean, std, seed=seed)
                   for cfg, seed in zip(configs, seeds, strict=True)]
        # a member with dropout has Dropout layers where one without has none: the probe
        # (any rate > 0) gives every position, and a member's rate 0 skips it there
        probe = create(replace(configs[0], dropout=0.5, init="default"), input_shape,
                       n_classes, mean, std, seed=0)
        return cls(members, [c.dropout for c in configs], seeds, probe, device)

    @staticmethod
    def tensors_of(model: Classifier) -> tuple[Tensors, Tensors]:
        params: Tensors = {}
        buffers: Tensors = {}
        for j, layer in enumerate(param_layers(model)):
            for name in ("weight", "bias"):
                p = getattr(layer, name, None)
                if p is not None:
                    params[(j, name)] = p
            if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                buffers |= {(j, name): getattr(layer, name) for name in _BN_BUFFERS}
        return params, buffers

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def replace_member(self, k: int, member: Classifier, cfg: ModelConfig, seed: int) -> None:
        super().replace_member(k, member, cfg, seed)
        self._rates[k] = float(cfg.dropout)
        self._gens[k] = self._generator(seed)

    def keep(self, slots: Sequence[int]) -> None:
        super().keep(slots)
        self._rates = [self._rates[i] for i in slots]
        self._gens = [self._gens[i] for i in slots]

    # ---- forward (and the tape's backward, see fused_tape) ------------------------------

    def _op(self, layer: nn.Module):
        """`op(h, layout, tape) -> (h, layout)`; ops that may run on a tape (`tapeable`)
        append their backward to it when it is a list."""
        index = {id(m): j for j, m in enumerate(self._probe_layers)}
        if isinstance(layer, nn.Flatten):
            return self._flatten
        if isinstance(layer, nn.Linear):
            return functools.partial(self._linear, index[id(layer)])
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise TunetrackError("grouped convolutions cannot be fused (yet)")
            return functools.partial(self._conv, index[id(layer)], layer)
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return functools.partial(self._batch_norm, index[id(layer)], layer)
        if isinstance(layer, (nn.Dropout, nn.Dropout2d)):
            return functools.partial(self._dropout, isinstance(layer, nn.Dropout2d))
        if isinstance(layer, _SHARED_LAYERS):
            shared = copy.deepcopy(layer).to(self.device)
            return functools.partial(self._shared, shared, activation_grad(shared))
        raise TunetrackError(f"layer {type(layer).__name__} cannot be fused")

    def forward(self, x: torch.Tensor, tape: list[Backward] | None = None) -> torch.Tensor:
        h, layout = self.normalize(x), SHARED
        for op in self.ops:
            h, layout = op(h, layout, tape)
        if layout != VECTOR:
            raise TunetrackError("a fused network must end in a Linear layer")
        return h

    def train_step(self, x: torch.Tensor,
                   loss: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training forward and backward without autograd (`fused_tape`; only where
        `tapeable`): `loss(logits)` returns the per-member losses [K] and their gradient
        with respect to the logits; every parameter's gradient is written to `flat_grad`
        (overwritten, not accumulated). Returns (losses, logits)."""
        if not self.tapeable:  # its convolutions would record nothing: wrong gradients
            raise TunetrackError("only MLP groups train on the tape; this group trains "
                                 "through autograd")
        tape: list[Backward] = []
        with torch.no_grad():
            logits = self.forward(x, tape)
            losses, grad = loss(logits)
            run_backward(tape, grad)
        return losses, logits

    def _flatten(self, h: torch.Tensor, layout: str, _tape=None):
        if layout == IMAGE:  # [N, K*C, H, W] -> [K, N, C*H*W], each member's (C, H, W) order
            return h.reshape(h.shape[0], self.k, -1).transpose(0, 1), VECTOR
        return h.flatten(1), layout  # the shared input (a tape never needs its gradient)

    def _shared(self, layer: nn.Module, grad: ActivationGrad | None, h: torch.Tensor,
                layout: str, tape: list[Backward] | None = None):
        out = layer(h)
        if tape is not None:
            tape.append(lambda g: grad(g, h, out))
        return out, layout

    def _linear(self, j: int, h: torch.Tensor, layout: str, tape: list[Backward] | None = None):
        w = self.params[(j, "weight")]  # [K, out, in]
        bias = self.params.get((j, "bias"))  # [K, out]
        if layout == SHARED:
            h = h.expand(self.k, *h.shape)
        wt = w.transpose(1, 2)
        out = torch.bmm(h, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, wt)
        if tape is not None:
            tape.append(functools.partial(_linear_backward, w, bias, h, layout != SHARED))
        return out, VECTOR

    def _conv(self, j: int, conv: nn.Conv2d, h: torch.Tensor, layout: str, _tape=None):
        w = self.params[(j, "weight")]
        w = w.reshape(-1, *w.shape[2:])  # [K*Cout, Cin, kh, kw]
        bias = self.params.get((j, "bias"))
        bias = None if bias is None else bias.reshape(-1)
        groups = 1 if layout == SHARED else self.k  # a shared input feeds every member
        out = F.conv2d(h, w, bias, conv.stride, conv.padding, conv.dilation, groups)
        return out, IMAGE

    def _batch_norm(self, j: int, bn: nn.modules.batchnorm._BatchNorm, h: torch.Tensor,
                    layout: str, tape: list[Backward] | None = None):
        buffers = self.stacked_buffers
        if self.training:
            buffers[(j, "num_batches_tracked")].add_(1)
        weight, bias = self.params[(j, "weight")], self.params[(j, "bias")]  # [K, C]
        mean, var = buffers[(j, "running_mean")].view(-1), buffers[(j, "running_var")].view(-1)
        w, b = weight.reshape(-1), bias.reshape(-1)
        if layout == IMAGE:
            return F.batch_norm(h, mean, var, w, b, self.training, bn.momentum, bn.eps), IMAGE
        k, n, c = h.shape  # [K, N, C] -> [N, K*C] and back
        rows = h.transpose(0, 1).reshape(n, k * c)
        if tape is None:
            out = F.batch_norm(rows, mean, var, w, b, self.training, bn.momentum, bn.eps)
        else:  # the kernels F.batch_norm and its autograd backward run on CPU
            out, saved_mean, saved_invstd = torch.native_batch_norm(
                rows, w, b, mean, var, True, bn.momentum, bn.eps)

            def backward(g: torch.Tensor) -> torch.Tensor:
                g_in, g_w, g_b = aten.native_batch_norm_backward(
                    g.transpose(0, 1).reshape(n, k * c), rows, w, mean, var, saved_mean,
                    saved_invstd, True, bn.eps, [True, True, True])
                weight.grad.copy_(g_w.view(k, c))
                bias.grad.copy_(g_b.view(k, c))
                return g_in.view(n, k, c).transpose(0, 1)
            tape.append(backward)
        return out.view(n, k, c).transpose(0, 1), VECTOR

    def _dropout(self, feature: bool, h: torch.Tensor, layout: str,
                 tape: list[Backward] | None = None):
        """Member k's mask: `dropout.keep_mask` from its own generator, of the shape
        `Dropout`/`Dropout2d` draws for it alone."""
        if not self.training or not any(self._rates):
            return h, layout
        k, like = self.k, {"device": h.device, "dtype": h.dtype}
        if layout == IMAGE:
            n, kc = h.shape[:2]
            c = kc // k
            shape = (n, c, 1, 1) if feature else (n, c, *h.shape[2:])
            noise = torch.ones(n, k, *shape[1:], **like)
            for i, (p, gen) in enumerate(zip(self._rates, self._gens, strict=True)):
                if p > 0:
                    noise[:, i] = keep_mask(shape, p, generator=gen, **like)
            return h * noise.view(n, kc, *shape[2:]), layout
        noise = torch.ones(h.shape, **like)  # rows contiguous
        for i, (p, gen) in enumerate(zip(self._rates, self._gens, strict=True)):
            if p > 0:
                noise[i] = keep_mask(h.shape[1:], p, generator=gen, **like)
        if tape is not None:
            tape.append(noise.mul)
        return h * noise, layout


def param_layers(model: Classifier) -> list[nn.Module]:
    """Linear/Conv/BatchNorm layers of a member, input side first: what gets stacked."""
    return [m for m in model.body.modules() if isinstance(m, _PARAM_LAYERS)]


def _linear_backward(w: torch.Tensor, bias: torch.Tensor | None, h: torch.Tensor,
                     needs_input: bool, g: torch.Tensor) -> torch.Tensor | None:
    """A fused Linear's backward: weight and bias gradients into their `flat_grad` slices
    (`.grad`), and the input's gradient unless the input is the shared batch. g^T h gives
    the weight gradient in the stored [out, in] layout; for a last layer of 10 classes it
    also took a quarter of the time of h^T g (11 vs 39 us for 8 x 64 digits, one thread)."""
    w.grad.copy_(torch.bmm(g.transpose(1, 2), h))
    if bias is not None:
        torch.sum(g, 1, out=bias.grad)
    return torch.bmm(g, w) if needs_input else None
