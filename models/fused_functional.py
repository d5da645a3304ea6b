"""K copies of the user's own network (`model.class_path`, a plugin's family) as one
batched network, through `torch.func`.

tunetrack's MLP and CNN fuse layer by layer (`fused_net`); a user's network is a module
we do not know, so it fuses as a whole: `functional_call` runs the user's module with
member k's parameters and buffers, and `vmap` over the member dimension runs all K at
once (a Linear becomes one batched matmul, a Conv2d one grouped convolution, as
`fused_net` writes them by hand). The parameters are rows of one [K, P] tensor
(`fused_stack.MemberStack`, keyed by their names in the network), so the group trains
with the same per-member optimizers and schedules (`fused_optim`) and the same per-member
bookkeeping (`trainer_core.EpochBook`) as tunetrack's own families.

Buffers are per member: batch-norm's running statistics move per member exactly as they
would alone (`tests/test_fused_user_network.py`). Randomness inside the network (dropout)
is drawn per member (`randomness="different"`) from torch's global generator: members'
masks differ from each other, but not the masks the same trial draws alone.

Not every module can run under `vmap` (Python control flow on tensor values, `.item()`,
in-place writes to a non-batched tensor, ...). `functional_problem` tries a training step
of two members before a group forms and says why one cannot; such trials train unfused.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from .errors import TunetrackError
from .fused_stack import MemberStack, Tensors
from .nets import Classifier
from .user_code import last_line


class FunctionalStack(MemberStack):
    """K members of one user network; `forward(x)` returns logits [K, N, n_classes]."""

    def __init__(self, members: Sequence[Classifier], device: torch.device):
        super().__init__(members, members[0], device)
        self.normalize = copy.deepcopy(members[0].normalize).to(device)
        # the module `functional_call` runs: its own tensors are never read (every
        # parameter and buffer is replaced by a member's); a plain list, so it is not ours
        self._module = [copy.deepcopy(members[0].body).to(device)]
        self._forward = vmap(self._call, in_dims=(0, 0, None), randomness="different")
        self.tapeable = False  # trains through autograd (`FusedNet.train_step`: MLPs only)

    @staticmethod
    def tensors_of(model: Classifier) -> tuple[Tensors, Tensors]:
        return dict(model.body.named_parameters()), dict(model.body.named_buffers())

    def train(self, mode: bool = True) -> FunctionalStack:
        super().train(mode)
        self._module[0].train(mode)  # dropout and batch-norm read the module's mode
        return self

    def _call(self, params: Tensors, buffers: Tensors, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._module[0], (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self.params, self.stacked_buffers, self.normalize(x))


def functional_problem(model: Classifier, sample: torch.Tensor, n_classes: int) -> str | None:
    """Why K copies of `model` cannot train as one `FunctionalStack` (one line), or None.

    Tries what a group does, on two stacked copies (`stack_module_state`) and `sample`
    (a few training images): a training forward under `vmap` and a backward. Also refused:
    frozen parameters and per-module learning-rate factors, which the unfused trainer
    honours (`optimizers.param_groups`) and a group's one [K, P] update would not."""
    body = model.body
    if any(not p.requires_grad for p in body.parameters()):
        return "its network has frozen parameters (requires_grad=False)"
    if any(getattr(m, "lr_factor", None) is not None for m in body.modules()):
        return "its network sets a per-module learning-rate factor (lr_factor)"
    copies = [copy.deepcopy(body).train() for _ in range(2)]
    params, buffers = stack_module_state(copies)
    x = model.normalize(sample)

    def call(p: Tensors, b: Tensors) -> torch.Tensor:
        return functional_call(copies[0], (p, b), (x,))

    try:
        logits = vmap(call, randomness="different")(params, buffers)
        if logits.shape != (2, len(sample), n_classes):
            return (f"its network returns {tuple(logits.shape[1:])} for {len(sample)} images,"
                    f" not logits ({len(sample)}, {n_classes})")
        logits.float().logsumexp(-1).sum().backward()
    except Exception as exc:  # whatever the user's module does that vmap cannot
        return f"its network cannot run under torch.func.vmap ({last_line(exc)})"
    return None


def stack_user_networks(members: Sequence[Classifier], sample: torch.Tensor,
                        n_classes: int, device: torch.device) -> FunctionalStack:
    """The members (each built by `nets.create`, as an unfused trial's network) as one
    `FunctionalStack`, once the first has shown it can (`functional_problem` on `sample`,
    a few training images on the CPU)."""
    problem = functional_problem(members[0], sample, n_classes)
    if problem is not None:
        raise TunetrackError(f"this group cannot be fused: {problem}")
    return FunctionalStack(members, device)
