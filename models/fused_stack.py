"""The members of a fused group as rows of one tensor: where each parameter lives, how a
member goes in and comes out.

All parameters of all members live in one flat [K, P] tensor (`flat`); each layer's
parameter is an `nn.Parameter` aliasing its slice, and its `.grad` aliases the matching
slice of `flat_grad`, so every gradient lands in one tensor and `fused_optim` updates each
member's row with its own hyperparameters. Every member is built by `nets.create` with its
own config and seed, exactly as an unfused trial would be, and copied in (`load_member`);
`extract(k)` gives member k back as an ordinary `Classifier`. `FusedNet` computes with it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import TunetrackError
from .nets import Classifier

_PARAM_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def param_layers(model: Classifier) -> list[nn.Module]:
    """Linear/Conv/BatchNorm layers of a member, input side first: what gets stacked."""
    return [m for m in model.body.modules() if isinstance(m, _PARAM_LAYERS)]


@dataclass
class _Slice:
    """Where one parameter of layer `layer` lives in each member's row of `flat`, in the
    member's own shape (a Linear weight [out, in], as `nn.Linear` keeps it)."""

    layer: int  # index into param_layers()
    name: str  # "weight" | "bias"
    shape: tuple[int, ...]
    start: int

    @property
    def stop(self) -> int:
        return self.start + math.prod(self.shape)


class MemberStack(nn.Module):
    """K members' parameters and batch-norm buffers, stacked; each member's dropout rate
    and generator (its masks, see `FusedNet`). Created on its device; it must not be moved
    with `.to()` (the parameters alias `flat`): make a new one instead."""

    def __init__(self, members: Sequence[Classifier], dropouts: Sequence[float],
                 seeds: Sequence[int], probe: Classifier, device: torch.device):
        super().__init__()
        if not members:
            raise TunetrackError("a fused group needs at least one member")
        self.device = device
        self.templates: list[Classifier] = list(members)  # plain list: not our parameters
        self._probe_layers = param_layers(probe)
        self.slices: list[_Slice] = []
        offset = 0
        for j, layer in enumerate(self._probe_layers):
            for name in ("weight", "bias"):
                p = getattr(layer, name, None)
                if p is not None:
                    self.slices.append(_Slice(j, name, tuple(p.shape), offset))
                    offset += p.numel()
        self.row_size = offset
        # which elements of a row are weight matrices/kernels (L1 applies to those only)
        self.l1_mask = torch.zeros(offset, dtype=torch.bool, device=device)
        for s in self.slices:
            if len(s.shape) > 1:
                self.l1_mask[s.start:s.stop] = True
        self._rates = list(map(float, dropouts))
        self._gens: list[torch.Generator] = [self._generator(s) for s in seeds]
        self._allocate(len(members))
        for k, member in enumerate(members):
            self._load_member(k, member)

    @property
    def k(self) -> int:
        return self.flat.shape[0]

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def _allocate(self, k: int, flat: torch.Tensor | None = None,
                  buffers: dict[str, torch.Tensor] | None = None) -> None:
        """(Re)create `flat`, `flat_grad`, the aliasing parameters and the BN buffers."""
        self.flat = (flat if flat is not None else
                     torch.zeros(k, self.row_size, device=self.device)).contiguous()
        self.flat_grad = torch.zeros_like(self.flat)
        self.params: dict[tuple[int, str], nn.Parameter] = {}
        for s in self.slices:
            view = self.flat[:, s.start:s.stop].view(k, *s.shape)
            param = nn.Parameter(view)
            param.grad = self.flat_grad[:, s.start:s.stop].view(k, *s.shape)
            self.params[(s.layer, s.name)] = param
        self.bn: dict[int, dict[str, torch.Tensor]] = {}
        for j, layer in enumerate(self._probe_layers):
            if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                self.bn[j] = {name: (buffers[f"{j}.{name}"] if buffers else torch.zeros(
                    k, *getattr(layer, name).shape, dtype=getattr(layer, name).dtype,
                    device=self.device)).contiguous()
                    for name in ("running_mean", "running_var", "num_batches_tracked")}

    def _load_member(self, k: int, member: Classifier) -> None:
        layers = param_layers(member)
        with torch.no_grad():
            for s in self.slices:
                source = getattr(layers[s.layer], s.name)
                if tuple(source.shape) != s.shape:
                    raise TunetrackError(f"member {k} does not fit the fused group: layer "
                                         f"{s.layer} {s.name} has shape {tuple(source.shape)},"
                                         f" the group {s.shape}")
                self.flat[k, s.start:s.stop] = source.detach().reshape(-1).to(self.device)
            for j, buffers in self.bn.items():
                for name, stacked in buffers.items():
                    stacked[k] = getattr(layers[j], name).detach().to(self.device)

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """A copy of member k's parameters and BN buffers (what `extract` needs)."""
        state = {"flat": self.flat[k].detach().clone()}
        for j, buffers in self.bn.items():
            for name, stacked in buffers.items():
                state[f"{j}.{name}"] = stacked[k].clone()
        return state

    def extract(self, k: int, state: dict[str, torch.Tensor] | None = None, *,
                last: bool = False) -> Classifier:
        """Member k (or a `member_state` of it) as an ordinary `Classifier` on our device.
        `last`: member k leaves the group now (its slot is refilled or dropped next), so
        the network it was built from is handed out instead of a copy (copying a module
        took 1.5 ms, a tenth of a 5-epoch group of 8 digits MLPs)."""
        state = state or self.member_state(k)
        template = self.templates[k]
        model = (template if last else copy.deepcopy(template)).to(self.device)
        layers = param_layers(model)
        with torch.no_grad():
            for s in self.slices:
                getattr(layers[s.layer], s.name).copy_(state["flat"][s.start:s.stop].view(s.shape))
            for j in self.bn:
                for name in ("running_mean", "running_var", "num_batches_tracked"):
                    getattr(layers[j], name).copy_(state[f"{j}.{name}"])
        return model

    def replace_member(self, k: int, member: Classifier, dropout: float, seed: int) -> None:
        """Put a new member (same architecture) into slot k: a refilled slot."""
        self._load_member(k, member)
        self.templates[k] = member
        self._rates[k] = float(dropout)
        self._gens[k] = self._generator(seed)

    def keep(self, slots: Sequence[int]) -> None:
        """Shrink the group to `slots` (in that order)."""
        index = torch.as_tensor(list(slots), dtype=torch.long, device=self.device)
        buffers = {f"{j}.{name}": stacked.index_select(0, index)
                   for j, b in self.bn.items() for name, stacked in b.items()}
        flat = self.flat.detach().index_select(0, index)
        self.templates = [self.templates[i] for i in slots]
        self._rates = [self._rates[i] for i in slots]
        self._gens = [self._gens[i] for i in slots]
        self._allocate(len(slots), flat, buffers)
