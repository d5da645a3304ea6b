"""Fused trials of the user's own network (`model.class_path`): K members trained as one
through torch.func match the same trials trained alone by the ordinary `Trainer`, epoch
by epoch (CPU, float tolerance), batch-norm running statistics and per-member scores
included; networks vmap cannot run are refused with the reason; a study with
`search.fuse: 4` and a user network runs end to end."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import optuna
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from tunetrack.models import ModelConfig, TrainConfig, Trainer, create
from tunetrack.models.fused_functional import FunctionalStack, functional_problem
from tunetrack.models.fused_train import FusedTrainer, Member
from tunetrack.models.metrics import SCORES
from tunetrack.search.cli import app
from tunetrack.search.fused_groups import GROUP_ATTR

from .test_fused_equivalence import (
    TOL,
    StopAt,
    _assert_same_history,
    _assert_same_weights,
    _solo,
)

CPU = torch.device("cpu")
runner = CliRunner(env={"COLUMNS": "200"})


class ConvNet(nn.Module):
    """A user's network as tunetrack never built one: its own module tree, a residual
    add, batch-norm in both flavours, a parameter outside any layer. No bias before a
    batch-norm: its true gradient is 0, and Adam turns the rounding noise there into
    lr-sized steps whose sign the last bit decides; they change nothing the network
    computes in training, but they move the running mean, so the validation losses of
    two exact computations would drift apart by 1e-3."""

    def __init__(self, num_classes: int, in_shape, channels: int = 6, hidden: int = 12):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.mix = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * 4 * 4, hidden, bias=False),
                                  nn.BatchNorm1d(hidden), nn.GELU(), nn.Linear(hidden, num_classes))
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.nn.functional.max_pool2d(h + self.mix(h), 2)
        return self.head(h) * self.temperature


class BranchyNet(nn.Module):
    """Python control flow on a tensor's value: vmap cannot run it."""

    def __init__(self, num_classes: int, in_shape):
        super().__init__()
        self.fc = nn.Linear(int(np.prod(in_shape)), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        return out if out.sum() > 0 else -out


class FrozenNet(ConvNet):
    def __init__(self, num_classes: int, in_shape):
        super().__init__(num_classes, in_shape)
        self.stem.requires_grad_(False)


def top2(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """A user's metric: is the label among the two most probable classes?"""
    return float((np.argsort(-y_prob, 1)[:, :2] == y_true[:, None]).any(1).mean())


def _model(name: str = "ConvNet", **init_args) -> ModelConfig:
    return ModelConfig(class_path=f"{__name__}.{name}", init_args=init_args)


def _members(optimizer: str, scheduler: str) -> list[Member]:
    """Four trials of one user network (its init_args shared) that differ in everything a
    member may differ in."""
    model = _model(channels=6, hidden=12)
    train = TrainConfig(device="cpu", batch_size=20, max_epochs=4, optimizer=optimizer,
                        scheduler=scheduler, step_size=1)
    recipes = [  # init | lr, weight decay, momentum, l1, label smoothing, seed
        ("default", 1e-2, 0.0, 0.9, 0.0, 0.0, 0),
        ("xavier_uniform", 3e-3, 1e-3, 0.8, 1e-4, 0.1, 1),
        ("kaiming_normal", 2e-2, 0.0, 0.5, 0.0, 0.0, 2),
        ("orthogonal", 5e-3, 1e-2, 0.0, 1e-3, 0.2, 3),
    ]
    return [Member(replace(model, init=init),
                   replace(train, lr=lr, weight_decay=wd, momentum=m, l1=l1,
                           label_smoothing=ls, seed=seed))
            for init, lr, wd, m, l1, ls, seed in recipes]


@pytest.mark.parametrize(("optimizer", "scheduler"),
                         [("adam", "none"), ("sgd", "step"), ("adamw", "onecycle")])
def test_member_matches_solo_training(splits, optimizer, scheduler):
    members = _members(optimizer, scheduler)
    trainer = FusedTrainer(members, splits, device=CPU)
    assert isinstance(trainer.net, FunctionalStack)
    fused = {r.member.train.seed: r for r in trainer.fit()}
    for member in members:
        fit, model = _solo(member, splits, group_seed=members[0].train.seed)
        got = fused[member.train.seed]
        _assert_same_history(got.fit, fit)
        assert type(got.model.body) is ConvNet  # the user's own module, its own weights
        # running statistics included: each member's batch-norm moved as it would alone
        _assert_same_weights(got.model, model)


@pytest.mark.parametrize("network", ["user", "cnn"])
def test_each_member_is_scored_as_alone(splits, network):
    """The study's scores (a built-in and the user's own) per member and epoch, as the
    ordinary trainer measures them: for the user's network and tunetrack's own families."""
    scores = {"macro_f1": SCORES["macro_f1"], "top2": top2}
    members = _members("adam", "none")[:3]
    if network == "cnn":
        cnn = ModelConfig(family="cnn", depth=2, width=8, batch_norm=True)
        members = [replace(m, model=replace(cnn, init=m.model.init)) for m in members]
    fused = {r.member.train.seed: r for r in
             FusedTrainer(members, splits, device=CPU, scores=scores).fit()}
    for member in members:
        model = create(member.model, splits.input_shape, splits.n_classes, splits.mean,
                       splits.std, seed=member.train.seed)
        solo = Trainer(model, member.train, splits, device=CPU, scores=scores)
        solo.gen = torch.Generator().manual_seed(members[0].train.seed)
        solo.aug_gen = torch.Generator().manual_seed(members[0].train.seed + 1)
        history = solo.fit().history
        got = fused[member.train.seed].fit.history
        assert [r.scores.keys() for r in got] == [r.scores.keys() for r in history]
        for f, s in zip(got, history, strict=True):
            for name in scores:
                assert f.value(name) == pytest.approx(s.value(name), **TOL), (name, f.epoch)
        # members differ: a score is not the group's
    assert len({tuple(r.fit.history[-1].scores.values()) for r in fused.values()}) > 1


def test_a_refilled_slot_starts_fresh_and_exact(splits):
    """A member that takes a finished member's slot starts from its own initial weights,
    batch-norm statistics and optimizer state: it matches the same trial alone on the
    group's stream from the epoch it joined; the member beside it is undisturbed."""
    members = _members("adam", "none")[:2]
    members[0] = replace(members[0], callbacks=[StopAt(0)])
    late = replace(_members("adam", "none")[2], train=replace(members[0].train, seed=12))
    queue = [late]
    results = FusedTrainer(members, splits, device=CPU,
                           refill=lambda: queue.pop() if queue else None).fit()
    assert [r.member.train.seed for r in results] == [0, 1, 12]
    model = create(late.model, splits.input_shape, splits.n_classes, splits.mean, splits.std,
                   seed=late.train.seed)
    solo = Trainer(model, late.train, splits, device=CPU)
    solo.gen = torch.Generator().manual_seed(0)
    solo.aug_gen = torch.Generator().manual_seed(1)
    for _ in solo.train_batches():  # the group's first epoch, before the slot was refilled
        pass
    _assert_same_history(results[2].fit, solo.fit())
    _assert_same_weights(results[2].model, solo.model)
    _assert_same_history(results[1].fit, _solo(members[1], splits, group_seed=0)[0])


@pytest.mark.parametrize(("name", "reason"), [
    ("BranchyNet", "its network cannot run under torch.func.vmap (RuntimeError: "),
    ("FrozenNet", "its network has frozen parameters (requires_grad=False)"),
])
def test_a_network_vmap_cannot_train_is_refused_with_the_reason(splits, name, reason):
    model = create(_model(name), splits.input_shape, splits.n_classes)
    problem = functional_problem(model, splits.train.x[:2], splits.n_classes)
    assert problem is not None and problem.startswith(reason)
    ok = create(_model(), splits.input_shape, splits.n_classes)
    assert functional_problem(ok, splits.train.x[:2], splits.n_classes) is None
    members = [Member(_model(name), TrainConfig(device="cpu", seed=s)) for s in range(2)]
    with pytest.raises(Exception, match="this group cannot be fused: its network"):
        FusedTrainer(members, splits, device=CPU)


NETS = '''
import torch
from torch import nn


class WideNet(nn.Module):
    def __init__(self, num_classes, in_shape, hidden=32, blocks=1):
        super().__init__()
        c, h, w = in_shape
        layers = [nn.Flatten(), nn.Linear(c * h * w, hidden, bias=False),
                  nn.BatchNorm1d(hidden), nn.ReLU()]
        for _ in range(blocks - 1):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class Branchy(WideNet):
    def forward(self, x):
        out = self.net(x)
        return out if out.sum() > 0 else -out


class Flaky(WideNet):
    """Raises inside its forward from its fifth training call on (the probe makes one)."""

    calls = 0

    def forward(self, x):
        if self.training:
            type(self).calls += 1
            if type(self).calls > 5:
                raise ValueError("the user's bug")
        return self.net(x)


def top2(y_true, y_prob):
    import numpy as np
    return float((np.argsort(-y_prob, 1)[:, :2] == y_true[:, None]).any(1).mean())
'''


def _study(tmp_path, network: str = "WideNet", **search) -> str:
    (tmp_path / "acme_fused.py").write_text(NETS)
    study = {
        "name": "own", "seed": 0, "dataset": {"name": "digits"},
        "model": {"class_path": f"acme_fused.{network}",
                  "init_args": {"hidden": {"int": [16, 48], "log": True},
                                "blocks": {"int": [1, 2]}},
                  "init": {"choice": ["default", "kaiming_normal"]}},
        "train": {"max_epochs": 3, "batch_size": 128,
                  "lr": {"float": [1e-3, 3e-2], "log": True}},
        "search": {"metric": {"class_path": "acme_fused.top2", "direction": "maximize"},
                   "sampler": "random", "n_trials": 6, "fuse": 4,
                   "pruner": {"type": "median", "n_startup_trials": 2,
                              "n_warmup_steps": 1}} | search,
        "tracking": {"enabled": False},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return str(path)


def test_validate_says_a_user_network_fuses_through_torch_func(tmp_path):
    result = runner.invoke(app, ["validate", _study(tmp_path)])
    assert result.exit_code == 0, result.output
    assert ("note: search.fuse: acme_fused.WideNet: a group's trials share its init_args and "
            "train as one model through torch.func (vmap)") in " ".join(result.stdout.split())


def test_a_study_with_fuse_4_and_a_user_network_runs_end_to_end(tmp_path):
    """Six trials of the user's network with the user's metric, tracking off: one group of
    four refilled to six, every trial an ordinary trial scored by the user's metric on
    the validation split each epoch and on the test split at its end."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = runner.invoke(app, ["run", _study(tmp_path), "--no-progress", "--storage",
                                 storage])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="own", storage=storage).trials
    assert len(trials) == 6
    assert {t.user_attrs[GROUP_ATTR] for t in trials} == {"g0"}
    shared = {(t.params["model.init_args.hidden"], t.params["model.init_args.blocks"])
              for t in trials}
    assert len(shared) == 1  # init_args are the group's
    assert len({t.params["train.lr"] for t in trials}) == 6  # the recipe each trial's own
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    assert completed and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    for t in completed:
        assert sorted(t.intermediate_values) == list(range(t.user_attrs["epochs_run"]))
        assert all(0 < v <= 1 for v in t.intermediate_values.values())
        assert t.value == t.intermediate_values[t.user_attrs["best_epoch"]]
        assert 0 < t.user_attrs["test_top2"] <= 1
    assert len({tuple(t.intermediate_values.values()) for t in trials}) == 6


def test_a_user_network_vmap_cannot_run_trains_unfused_and_says_why(tmp_path, caplog):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    with caplog.at_level("INFO", logger="tunetrack.search.fused_study"):
        result = runner.invoke(app, ["run", _study(tmp_path, "Branchy", n_trials=2),
                                     "--no-progress", "--storage", storage])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="own", storage=storage).trials
    assert len(trials) == 2 and all(GROUP_ATTR not in t.user_attrs for t in trials)
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert ("trial 0 trains unfused: its network cannot run under torch.func.vmap "
            "(RuntimeError: ") in caplog.text


def test_on_cpu_a_user_network_fuses_below_its_own_limit():
    """The user's network gains less from fusing on a CPU than tunetrack's taped MLP (the
    bench's user-grid): at 3.3 M multiply-adds per member step (two hidden layers of 128
    at batch 128 on digits) the built-in MLP still fuses, the same layers as the user's
    network do not; on a GPU both do."""
    from tunetrack.models import DataConfig, load_splits
    from tunetrack.models.fused_fields import CPU_FUSE_MAX_MACS_USER
    from tunetrack.models.fused_net import fusing_pays, step_macs
    from tunetrack.models.fused_train import unfused_reason

    digits = load_splits(DataConfig(name="digits"))
    builtin = ModelConfig(family="mlp", depth=2, width=128)
    user = ModelConfig(class_path="bench.fused_trials.UserMLP",
                       init_args={"hidden": 128, "blocks": 2})
    args = (digits.input_shape, digits.n_classes, 128)
    assert step_macs(user, *args) == step_macs(builtin, *args) > CPU_FUSE_MAX_MACS_USER
    assert fusing_pays(builtin, *args, CPU)
    assert not fusing_pays(user, *args, CPU)
    assert fusing_pays(user, *args, torch.device("cuda"))
    assert unfused_reason(user, digits, 128, CPU) == (
        "its members would take more than 2 M multiply-adds per step on CPU, where fusing "
        "gains little")
    assert unfused_reason(user, digits, 32, CPU) is None


def test_a_plugin_network_fuses_and_a_study_of_only_builtins_that_cannot_is_refused():
    """A `model.family` that is not tunetrack's is a plugin's network: it fuses like a
    class_path (validate needs no torch to say so); resnet alone still cannot."""
    from tunetrack.search.config import StudySpec
    from tunetrack.search.fused_groups import fuse_notes, fuse_problems

    def spec(family):
        return StudySpec.model_validate({"name": "p", "model": {"family": family},
                                         "search": {"fuse": 4}})

    mixed = spec({"choice": ["resnet", "acme_unet"]})
    assert fuse_problems(mixed, ["resnet", "acme_unet"]) == []
    notes = fuse_notes(mixed, ["resnet", "acme_unet"])
    assert "on a CPU only architectures of at most 4 M (acme_unet: 2 M) multiply-adds" in \
        notes[1]
    assert notes[2].startswith("search.fuse: acme_unet: a group's trials share its init_args")
    assert notes[3] == "search.fuse: trials that draw model.family resnet train unfused"
    assert fuse_problems(spec("resnet"), ["resnet"]) == [
        "search.fuse: fusing 4 trials needs model.family mlp or cnn but the study trains "
        "resnet; use fuse: 1"]


def test_an_error_inside_the_users_network_fails_its_group_not_the_study(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = runner.invoke(app, ["run", _study(tmp_path, "Flaky", n_trials=3, fuse=2),
                                 "--no-progress", "--storage", storage])
    trials = optuna.load_study(study_name="own", storage=storage).trials
    assert len(trials) == 3, result.output  # the study went on after the group failed
    assert [t.state.name for t in trials] == ["FAIL"] * 3
    assert all(t.user_attrs["reason"] == "ValueError: the user's bug" for t in trials)
    assert [t.user_attrs.get(GROUP_ATTR) for t in trials[:2]] == ["g0", "g0"]
