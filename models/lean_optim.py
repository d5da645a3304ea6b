"""torch.optim's optimizers, stepped through torch's functional updates without the wrapping.

Around the update itself, every `step()` of a `torch.optim` optimizer runs a profiler
record, the step-hook chains, two grad-mode switches with `torch._dynamo.graph_break()` and
a rebuild of its tensor lists: ~0.18 ms a step on a 2-core AMD EPYC VM, five times the
fused Adam update of a digits MLP (36 us; bench/README.md, "in the code"). And the first
`step`, `zero_grad` or `add_param_group` of a process imports `torch._dynamo` (sympy and
torch.distributed with it: 2.0 s on that VM, 0.7 s on an Intel Xeon) for a decorator that
only matters when `torch.compile` traces into an optimizer, which a trial never does.

The classes here *are* torch's (`isinstance(opt, torch.optim.Adam)`: same defaults, param
groups, state names, `state_dict`), so every LR scheduler drives them unchanged. Only
`step` and `zero_grad` differ, and `add_param_group` is torch's own without its lazy
`torch._dynamo` decorator: `step` calls the very functional update torch's `step` calls
(`torch.optim.adam.adam`, ...) with the same state tensors and the same GradScaler
arguments, so the numbers are the same bit for bit (tests/test_models_lean_optim.py).
They run no step hooks: nothing in tunetrack registers one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import adam, adamw, rmsprop, sgd


def _undecorated(method: Callable) -> Callable:
    """torch's method without its `torch._disable_dynamo` wrapper (functools.wraps keeps the
    original as `__wrapped__`; a torch without the wrapper has nothing to remove)."""
    return getattr(method, "__wrapped__", method)


def _step_count(p: torch.Tensor, on_device: bool) -> torch.Tensor:
    """The "step" state torch's `_init_group` creates: on the parameter's device for fused and
    capturable updates (always float32 then), else a CPU scalar of the default float type."""
    if on_device:
        return torch.zeros((), dtype=torch.float32, device=p.device)
    wide = torch.get_default_dtype() == torch.float64
    return torch.zeros((), dtype=torch.float64 if wide else torch.float32)


class _Lean(torch.optim.Optimizer):
    """`step` = for each group, the functional update over its parameters that have a grad."""

    add_param_group = _undecorated(torch.optim.Optimizer.add_param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params, [p.grad for p in params])
        return loss

    # `Optimizer.__init__` wraps a class's `step` in its profiling/hook wrapper unless it is
    # marked as done: that wrapper is the per-step cost this class exists to skip
    step.hooked = True

    def _update(self, group: dict, params: list[torch.Tensor],
                grads: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def _amp(self) -> dict[str, Any]:
        """What a GradScaler hands a fused optimizer as attributes, as torch's `step` reads it."""
        return {"grad_scale": getattr(self, "grad_scale", None),
                "found_inf": getattr(self, "found_inf", None)}


class _LeanAdam(_Lean):
    _functional: Callable = staticmethod(adam.adam)

    def _update(self, group: dict, params: list[torch.Tensor],
                grads: list[torch.Tensor]) -> None:
        amsgrad, states = group["amsgrad"], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = _step_count(p, group["fused"] or group["capturable"])
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if amsgrad:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
            states.append(state)
        beta1, beta2 = group["betas"]
        self._functional(
            params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
            [s["step"] for s in states], foreach=group["foreach"],
            capturable=group["capturable"], differentiable=False, fused=group["fused"],
            has_complex=False, amsgrad=amsgrad, beta1=beta1, beta2=beta2, lr=group["lr"],
            weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
            **self._amp())


class Adam(_LeanAdam, torch.optim.Adam):
    """torch.optim.Adam with a lean `step` (module docstring)."""


class AdamW(_LeanAdam, torch.optim.AdamW):
    """torch.optim.AdamW with a lean `step` (module docstring)."""

    _functional = staticmethod(adamw.adamw)


class SGD(_Lean, torch.optim.SGD):
    """torch.optim.SGD with a lean `step` (module docstring)."""

    def _update(self, group: dict, params: list[torch.Tensor],
                grads: list[torch.Tensor]) -> None:
        # as torch: buffers only with momentum, None until the first step creates them
        momentum = group["momentum"]
        buffers = [self.state[p].get("momentum_buffer") for p in params] if momentum else []
        sgd.sgd(params, grads, buffers, weight_decay=group["weight_decay"], momentum=momentum,
                lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"],
                maximize=group["maximize"], has_sparse_grad=False, foreach=group["foreach"],
                fused=group["fused"], **self._amp())
        for p, buffer in zip(params, buffers, strict=False):
            self.state[p]["momentum_buffer"] = buffer


class RMSprop(_Lean, torch.optim.RMSprop):
    """torch.optim.RMSprop with a lean `step` (module docstring)."""

    def _update(self, group: dict, params: list[torch.Tensor],
                grads: list[torch.Tensor]) -> None:
        momentum, centered, states = group["momentum"], group["centered"], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = _step_count(p, group["capturable"])
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if momentum > 0:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                if centered:
                    state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            states.append(state)
        rmsprop.rmsprop(
            params, grads, [s["square_avg"] for s in states],
            [s["grad_avg"] for s in states] if centered else [],
            [s["momentum_buffer"] for s in states] if momentum > 0 else [],
            [s["step"] for s in states], foreach=group["foreach"], maximize=group["maximize"],
            differentiable=False, capturable=group["capturable"], has_complex=False,
            lr=group["lr"], alpha=group["alpha"], eps=group["eps"],
            weight_decay=group["weight_decay"], momentum=momentum, centered=centered)
