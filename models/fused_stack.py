"""The members of a fused group as rows of one tensor: where each parameter lives, how a
member goes in and comes out.

All parameters of all members live in one flat [K, P] tensor (`flat`); each parameter is
an `nn.Parameter` aliasing its slice, and its `.grad` aliases the matching slice of
`flat_grad`, so every gradient lands in one tensor and `fused_optim` updates each member's
row with its own hyperparameters. Buffers (batch-norm running statistics, ...) are stacked
per member, [K, *shape] each. Every member is built by `nets.create` with its own config
and seed, exactly as an unfused trial would be, and copied in (`_load_member`);
`extract(k)` gives member k back as an ordinary `Classifier`.

Which tensors a member has, and under which keys, is the subclass's `tensors_of`:
`FusedNet` (tunetrack's MLP and CNN) keys them by layer position, `FunctionalStack` (the
user's own network) by their names in the network.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig
from .errors import TunetrackError
from .nets import Classifier

Tensors = dict[Hashable, torch.Tensor]


@dataclass
class _Slice:
    """Where one parameter lives in each member's row of `flat`, in the member's own shape
    (a Linear weight [out, in], as `nn.Linear` keeps it)."""

    key: Hashable  # the parameter's key in `tensors_of`
    shape: tuple[int, ...]
    start: int

    @property
    def stop(self) -> int:
        return self.start + math.prod(self.shape)


class MemberStack(nn.Module):
    """K members' parameters (`params`, rows of `flat`) and buffers (`stacked_buffers`).
    Created on its device; it must not be moved with `.to()` (the parameters alias
    `flat`): make a new one instead."""

    def __init__(self, members: Sequence[Classifier], probe: Classifier, device: torch.device):
        """`probe`: a member with every parameter and buffer any member may have."""
        super().__init__()
        if not members:
            raise TunetrackError("a fused group needs at least one member")
        self.device = device
        self.templates: list[Classifier] = list(members)  # plain list: not our parameters
        params, buffers = self.tensors_of(probe)
        self.slices: list[_Slice] = []
        offset = 0
        for key, p in params.items():
            self.slices.append(_Slice(key, tuple(p.shape), offset))
            offset += p.numel()
        self.row_size = offset
        # which elements of a row are weight matrices/kernels (L1 applies to those only)
        self.l1_mask = torch.zeros(offset, dtype=torch.bool, device=device)
        for s in self.slices:
            if len(s.shape) > 1:
                self.l1_mask[s.start:s.stop] = True
        self._buffer_like = {key: (tuple(b.shape), b.dtype) for key, b in buffers.items()}
        self._allocate(len(members))
        for k, member in enumerate(members):
            self._load_member(k, member)

    @staticmethod
    def tensors_of(model: Classifier) -> tuple[Tensors, Tensors]:
        """A member's (parameters, buffers) by key, input side first."""
        raise NotImplementedError

    @property
    def k(self) -> int:
        return self.flat.shape[0]

    def _allocate(self, k: int, flat: torch.Tensor | None = None,
                  buffers: Tensors | None = None) -> None:
        """(Re)create `flat`, `flat_grad`, the aliasing parameters and the buffers."""
        self.flat = (flat if flat is not None else
                     torch.zeros(k, self.row_size, device=self.device)).contiguous()
        self.flat_grad = torch.zeros_like(self.flat)
        self.params: dict[Hashable, nn.Parameter] = {}
        for s in self.slices:
            view = self.flat[:, s.start:s.stop].view(k, *s.shape)
            param = nn.Parameter(view)
            param.grad = self.flat_grad[:, s.start:s.stop].view(k, *s.shape)
            self.params[s.key] = param
        self.stacked_buffers: Tensors = {
            key: (buffers[key] if buffers else torch.zeros(k, *shape, dtype=dtype,
                                                           device=self.device)).contiguous()
            for key, (shape, dtype) in self._buffer_like.items()}

    def _load_member(self, k: int, member: Classifier) -> None:
        params, buffers = self.tensors_of(member)
        with torch.no_grad():
            for s in self.slices:
                source = params[s.key]
                if tuple(source.shape) != s.shape:
                    raise TunetrackError(f"member {k} does not fit the fused group: "
                                         f"parameter {s.key} has shape {tuple(source.shape)},"
                                         f" the group {s.shape}")
                self.flat[k, s.start:s.stop] = source.detach().reshape(-1).to(self.device)
            for key, stacked in self.stacked_buffers.items():
                stacked[k] = buffers[key].detach().to(self.device)

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """A copy of member k's parameters and buffers (what `extract` needs)."""
        return {"flat": self.flat[k].detach().clone(),
                "buffers": {key: b[k].clone() for key, b in self.stacked_buffers.items()}}

    def extract(self, k: int, state: dict | None = None, *, last: bool = False) -> Classifier:
        """Member k (or a `member_state` of it) as an ordinary `Classifier` on our device.
        `last`: member k leaves the group now (its slot is refilled or dropped next), so
        the network it was built from is handed out instead of a copy (copying a module
        took 1.5 ms, a tenth of a 5-epoch group of 8 digits MLPs)."""
        state = state or self.member_state(k)
        template = self.templates[k]
        model = (template if last else copy.deepcopy(template)).to(self.device)
        params, buffers = self.tensors_of(model)
        with torch.no_grad():
            for s in self.slices:
                params[s.key].copy_(state["flat"][s.start:s.stop].view(s.shape))
            for key, value in state["buffers"].items():
                buffers[key].copy_(value)
        return model

    def replace_member(self, k: int, member: Classifier, cfg: ModelConfig, seed: int) -> None:
        """Put a new member (same architecture; built from `cfg` with `seed`) into slot k:
        a refilled slot."""
        self._load_member(k, member)
        self.templates[k] = member

    def keep(self, slots: Sequence[int]) -> None:
        """Shrink the group to `slots` (in that order)."""
        index = torch.as_tensor(list(slots), dtype=torch.long, device=self.device)
        buffers = {key: b.index_select(0, index) for key, b in self.stacked_buffers.items()}
        flat = self.flat.detach().index_select(0, index)
        self.templates = [self.templates[i] for i in slots]
        self._allocate(len(slots), flat, buffers)
