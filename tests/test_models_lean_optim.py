"""`models/lean_optim.py`: torch's optimizers with a lean step give torch's numbers bit for bit,
drive torch's schedulers unchanged, and never import `torch._dynamo`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from tunetrack.models import lean_optim
from tunetrack.models.config import TrainConfig
from tunetrack.models.optimizers import build_optimizer, build_scheduler

CASES = {
    "sgd": (lean_optim.SGD, torch.optim.SGD,
            {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "fused": True}),
    "sgd-plain": (lean_optim.SGD, torch.optim.SGD, {"weight_decay": 1e-3, "fused": True}),
    "adam": (lean_optim.Adam, torch.optim.Adam, {"weight_decay": 1e-3, "fused": True}),
    "adam-amsgrad": (lean_optim.Adam, torch.optim.Adam, {"amsgrad": True, "fused": True}),
    "adam-foreach": (lean_optim.Adam, torch.optim.Adam, {"foreach": True}),
    "adamw": (lean_optim.AdamW, torch.optim.AdamW, {"weight_decay": 0.05, "fused": True}),
    "rmsprop": (lean_optim.RMSprop, torch.optim.RMSprop,
                {"momentum": 0.8, "weight_decay": 1e-3, "foreach": True}),
    "rmsprop-centered": (lean_optim.RMSprop, torch.optim.RMSprop,
                         {"centered": True, "foreach": True}),
}


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _groups(net: nn.Module) -> list[dict]:
    """Two groups with their own lr, as a transfer backbone and its head get them."""
    first, second = net[0], net[2]
    return [{"params": list(first.parameters()), "lr": 0.01},
            {"params": list(second.parameters()), "lr": 0.05}]


def _train(kind: type, settings: dict, steps: int = 12) -> tuple[nn.Module, torch.optim.Optimizer]:
    net = _net(0)
    opt = kind(_groups(net), lr=0.05, **settings)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[0.01, 0.05], total_steps=steps)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x, y = torch.randn(32, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        if step == 3:  # a step where one layer has no gradient: torch skips it, so must we
            loss = nn.functional.cross_entropy(net[2](net[0](x).detach().relu()), y)
        loss.backward()
        opt.step()
        sched.step()
    return net, opt


@pytest.mark.parametrize("case", sorted(CASES))
def test_lean_step_gives_torchs_numbers_bit_for_bit(case):
    lean_kind, torch_kind, settings = CASES[case]
    lean_net, lean = _train(lean_kind, settings)
    ref_net, ref = _train(torch_kind, settings)
    assert isinstance(lean, torch_kind)
    for a, b in zip(lean_net.parameters(), ref_net.parameters(), strict=True):
        assert torch.equal(a, b)
    lean_state, ref_state = lean.state_dict(), ref.state_dict()
    assert lean_state["param_groups"] == ref_state["param_groups"]  # the schedule's lr, betas
    assert lean_state["state"].keys() == ref_state["state"].keys()
    for index, state in ref_state["state"].items():
        assert state.keys() == lean_state["state"][index].keys()
        for name, value in state.items():
            other = lean_state["state"][index][name]
            assert torch.equal(other, value), (index, name)
            assert (other.dtype, other.device) == (value.dtype, value.device), (index, name)


def test_lean_adam_reads_a_grad_scalers_arguments_as_torch_does():
    """GradScaler hands fused optimizers `grad_scale`/`found_inf` as attributes."""
    nets = []
    for kind in (lean_optim.Adam, torch.optim.Adam):
        net = _net(0)
        opt = kind(net.parameters(), lr=0.1, fused=True)
        net(torch.ones(2, 6)).sum().mul(4.0).backward()
        opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(0.0)
        opt.step()
        opt.found_inf = torch.tensor(1.0)  # an overflow: the step is skipped
        opt.step()
        nets.append(net)
    for a, b in zip(*(n.parameters() for n in nets), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(nets[0][0].weight, _net(0)[0].weight)


def test_zero_grad_sets_none_or_zeros_as_torch():
    net = _net(0)
    opt = lean_optim.SGD(net.parameters(), lr=0.1)
    net(torch.ones(2, 6)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert all(torch.count_nonzero(p.grad) == 0 for p in net.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_every_scheduler_drives_a_lean_optimizer(name):
    for scheduler in ("step", "exponential", "cosine", "onecycle", "plateau"):
        cfg = TrainConfig(optimizer=name, scheduler=scheduler, lr=0.1, momentum=0.9,
                          max_epochs=4, step_size=1, step_gamma=0.5)
        opt = build_optimizer([nn.Parameter(torch.ones(3))], cfg)
        sched = build_scheduler(opt, cfg, steps_per_epoch=2)
        opt.step()
        sched.step(1.0) if scheduler == "plateau" else sched.step()
        if scheduler in ("step", "exponential", "cosine"):
            assert opt.param_groups[0]["lr"] < 0.1, scheduler


_NO_DYNAMO = """
import json, sys
from tunetrack.models import DataConfig, ModelConfig, TrainConfig, Trainer, create, load_splits
splits = load_splits(DataConfig(name="synthetic", n_samples=120, n_classes=3, shape=(1, 4, 4)))
seen = {}
for name in ("sgd", "adam", "adamw", "rmsprop"):
    model = create(ModelConfig(family="mlp", depth=1, width=8), splits.input_shape,
                   splits.n_classes, seed=0)
    cfg = TrainConfig(optimizer=name, scheduler="onecycle", max_epochs=2, batch_size=32,
                      device="cpu")
    Trainer(model, cfg, splits).fit()
    seen[name] = "torch._dynamo" in sys.modules
from tunetrack.models.fused_train import FusedTrainer, Member
members = [Member(ModelConfig(family="mlp", depth=1, width=8),
                  TrainConfig(optimizer=name, scheduler="onecycle", max_epochs=2, batch_size=32,
                              device="cpu", seed=i))
           for i, name in enumerate(("sgd", "adam", "adamw", "rmsprop"))]
FusedTrainer(members, splits).fit()  # its members' schedules drive lean shadow optimizers
seen["fused"] = "torch._dynamo" in sys.modules
print(json.dumps(seen))
"""


def test_a_trial_never_imports_torch_dynamo():
    """The import costs 0.7-2 s on a 2-core CPU, and training needs none of it: neither an
    ordinary trial nor a fused group."""
    out = subprocess.run([sys.executable, "-c", _NO_DYNAMO], capture_output=True, text=True,
                         check=True, timeout=300)
    assert json.loads(out.stdout.splitlines()[-1]) == dict.fromkeys(
        ("sgd", "adam", "adamw", "rmsprop", "fused"), False)
