"""One home per rule: each config dataclass lists its own bad values (`problems()`), and
the builders that consume it (`Trainer`, `create`, `build_optimizer`, `load_splits`) stop on
those very lines. Optimizers and schedulers come from name registries: each name builds its
own type with the config's settings, and an unknown name never falls through to a default."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tunetrack.models import (
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    TrainConfig,
    Trainer,
    TrialConfig,
    TunetrackError,
    choices,
    create,
    load_splits,
)
from tunetrack.models.config import AugmentConfig
from tunetrack.models.optimizers import (
    OPTIMIZER_BUILDERS,
    SCHEDULER_BUILDERS,
    build_optimizer,
    build_scheduler,
)

# (config class, field, bad value, the field's name in the message)
BAD = [
    (TrainConfig, "lr", 0.0, "train.lr"),
    (TrainConfig, "lr", -0.1, "train.lr"),
    (TrainConfig, "lr", math.nan, "train.lr"),
    (TrainConfig, "lr", math.inf, "train.lr"),
    (TrainConfig, "batch_size", 0, "train.batch_size"),
    (TrainConfig, "max_epochs", 0, "train.max_epochs"),
    (TrainConfig, "momentum", 2.0, "train.momentum"),
    (TrainConfig, "momentum", 1.0, "train.momentum"),
    (TrainConfig, "weight_decay", -1.0, "train.weight_decay"),
    (TrainConfig, "l1", -0.1, "train.l1"),
    (TrainConfig, "label_smoothing", 2.0, "train.label_smoothing"),
    (TrainConfig, "step_size", 0, "train.step_size"),
    (TrainConfig, "step_gamma", 0.0, "train.step_gamma"),
    (TrainConfig, "exp_gamma", 1.5, "train.exp_gamma"),
    (TrainConfig, "cosine_eta_min", -1.0, "train.cosine_eta_min"),
    (TrainConfig, "onecycle_pct_start", 1.0, "train.onecycle_pct_start"),
    (TrainConfig, "plateau_factor", 2.0, "train.plateau_factor"),
    (TrainConfig, "plateau_factor", 1.0, "train.plateau_factor"),
    (TrainConfig, "plateau_patience", -1, "train.plateau_patience"),
    (TrainConfig, "eval_batch_size", 0, "train.eval_batch_size"),
    (TrainConfig, "device", "tpu", "train.device"),
    (TrainConfig, "device", "cuda:x", "train.device"),
    (EarlyStoppingConfig, "patience", -1, "train.early_stopping.patience"),
    (EarlyStoppingConfig, "patience", 0, "train.early_stopping.patience"),
    (EarlyStoppingConfig, "min_delta", -0.1, "train.early_stopping.min_delta"),
    (AugmentConfig, "rotation", 200.0, "train.augment.rotation"),
    (ModelConfig, "depth", 0, "model.depth"),
    (ModelConfig, "width", 0, "model.width"),
    (ModelConfig, "dropout", 1.0, "model.dropout"),
    (ModelConfig, "dropout", -0.1, "model.dropout"),
    (ModelConfig, "kernel_size", 0, "model.kernel_size"),
    (ModelConfig, "width_multiplier", 0.0, "model.width_multiplier"),
    (ModelConfig, "freeze", -1, "model.freeze"),
    (ModelConfig, "backbone_lr_factor", 0.0, "model.backbone_lr_factor"),
    (ModelConfig, "input_size", 0, "model.input_size"),
    (DataConfig, "val_fraction", 1.2, "dataset.val_fraction"),
    (DataConfig, "val_fraction", 0.0, "dataset.val_fraction"),
    (DataConfig, "test_fraction", -0.1, "dataset.test_fraction"),
    (DataConfig, "channels", 2, "dataset.channels"),
    (DataConfig, "image_size", 0, "dataset.image_size"),
    (DataConfig, "n_classes", 1, "dataset.n_classes"),
]


def _line(kind: type, field: str, value: object) -> str:
    (line,) = kind(**{field: value}).problems()
    return line


@pytest.mark.parametrize(("kind", "field", "value", "name"), BAD,
                         ids=[f"{n}={v}" for _, _, v, n in BAD])
def test_each_bad_value_is_one_line_naming_the_field_and_the_value(kind, field, value, name):
    line = _line(kind, field, value)
    assert line.startswith(f"{name} must be ") and line.endswith(f" but got {value!r}")


def test_defaults_and_edges_that_the_trainer_accepts_pass():
    assert TrialConfig().problems() == []
    edges = TrainConfig(momentum=0.0, label_smoothing=0.0, step_gamma=1.0, exp_gamma=1.0,
                        plateau_patience=0, weight_decay=0.0, device="cuda:1",
                        early_stopping=EarlyStoppingConfig(patience=1, min_delta=0.0))
    assert edges.problems() == []
    assert ModelConfig(dropout=0.0, freeze=0, input_size=1).problems() == []
    assert DataConfig(val_fraction=0.5, test_fraction=0.01, seed=2**32 - 1).problems() == []
    assert TrainConfig(seed=2**32 - 1).problems() == [] == TrainConfig(seed=0).problems()


def test_val_and_test_fractions_must_leave_a_training_split():
    (line,) = DataConfig(val_fraction=0.5, test_fraction=0.5).problems()
    assert line == ("dataset.val_fraction + dataset.test_fraction must be < 1 (the rest is "
                    "the training split) but got 0.5 + 0.5")
    # an out-of-range fraction is named alone, not again in the sum
    assert len(DataConfig(val_fraction=1.2).problems()) == 1


def test_nested_and_trial_problems_gather_every_section():
    cfg = TrialConfig(data=DataConfig(val_fraction=1.2), model=ModelConfig(depth=0),
                      train=TrainConfig(lr=0.0, augment=AugmentConfig(flip=True, rotation=-1),
                                        early_stopping=EarlyStoppingConfig(patience=-1)))
    names = [line.split(" must be")[0] for line in cfg.problems()]
    assert names == ["dataset.val_fraction", "model.depth", "train.lr",
                     "train.early_stopping.patience", "train.augment.rotation"]
    with pytest.raises(TunetrackError) as info:
        cfg.check()
    assert "\n" not in str(info.value) and str(info.value).count("; ") == 4


# ------------------------------------------------------ the builders use the same rules


def _model(splits) -> nn.Module:
    return create(ModelConfig(width=4, depth=1), splits.input_shape, splits.n_classes)


@pytest.mark.parametrize(("kind", "field", "value", "name"),
                         [b for b in BAD if b[0] in (TrainConfig, EarlyStoppingConfig,
                                                     AugmentConfig)],
                         ids=lambda v: str(v))
def test_the_trainer_stops_on_the_config_line(splits, kind, field, value, name):
    bad = kind(**{field: value})
    cfg = {TrainConfig: lambda: bad,
           EarlyStoppingConfig: lambda: TrainConfig(early_stopping=bad),
           AugmentConfig: lambda: TrainConfig(augment=bad)}[kind]()
    model = _model(splits)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TunetrackError) as info:
        Trainer(model, cfg, splits)
    assert str(info.value) == _line(kind, field, value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(("field", "value"),
                         [(f, v) for k, f, v, _ in BAD if k is ModelConfig])
def test_create_stops_on_the_config_line(field, value):
    with pytest.raises(TunetrackError) as info:
        create(ModelConfig(**{field: value}), (1, 8, 8), 3)
    assert str(info.value) == _line(ModelConfig, field, value)


@pytest.mark.parametrize(("field", "value"),
                         [(f, v) for k, f, v, _ in BAD if k is DataConfig])
def test_load_splits_stops_on_the_config_line(field, value):
    cfg = DataConfig(name="synthetic", **{field: value})
    with pytest.raises(TunetrackError) as info:
        load_splits(cfg)
    assert str(info.value) == _line(DataConfig, field, value)


def test_build_optimizer_stops_on_the_config_line():
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(TunetrackError) as info:
        build_optimizer(params, TrainConfig(lr=-0.1))
    assert str(info.value) == "train.lr must be > 0 and finite but got -0.1"


# -------------------------------------------------- optimizers and schedulers by name


def test_registries_are_dicts_of_the_published_names():
    assert list(OPTIMIZER_BUILDERS) == list(choices.OPTIMIZERS)
    assert list(SCHEDULER_BUILDERS) == list(choices.SCHEDULERS)


def _params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(3, 2)), nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize(("name", "kind", "settings"), [
    ("sgd", torch.optim.SGD,
     {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 1e-3, "fused": True}),
    ("adam", torch.optim.Adam, {"lr": 0.05, "weight_decay": 1e-3, "fused": True}),
    ("adamw", torch.optim.AdamW, {"lr": 0.05, "weight_decay": 1e-3, "fused": True}),
    ("rmsprop", torch.optim.RMSprop,
     {"lr": 0.05, "momentum": 0.8, "weight_decay": 1e-3, "foreach": True}),
])
def test_each_optimizer_name_builds_its_type_with_the_config_settings(name, kind, settings):
    cfg = TrainConfig(optimizer=name, lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)
    opt = build_optimizer(_params(), cfg)
    assert isinstance(opt, kind) and type(opt).__module__ == "tunetrack.models.lean_optim"
    assert {k: opt.defaults[k] for k in settings} == settings
    plain = build_optimizer(_params(), cfg, textbook=True)  # torch's own class, its defaults
    assert type(plain) is kind
    assert not plain.defaults.get("fused") and not plain.defaults.get("foreach")


def test_sgd_nesterov_needs_momentum_and_groups_keep_their_lr():
    opt = build_optimizer(_params(), TrainConfig(optimizer="sgd", momentum=0.0, nesterov=True))
    assert opt.defaults["nesterov"] is False  # torch refuses nesterov without momentum
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1},
              {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.01}]
    opt = build_optimizer(groups, TrainConfig(optimizer="adamw", lr=0.1))
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]


_SCHED = torch.optim.lr_scheduler


@pytest.mark.parametrize(("name", "kind", "settings"), [
    ("none", type(None), {}),
    ("step", _SCHED.StepLR, {"step_size": 4, "gamma": 0.3}),
    ("exponential", _SCHED.ExponentialLR, {"gamma": 0.9}),
    ("cosine", _SCHED.CosineAnnealingLR, {"T_max": 12, "eta_min": 1e-4}),
    ("onecycle", _SCHED.OneCycleLR, {"total_steps": 12 * 5}),
    ("plateau", _SCHED.ReduceLROnPlateau, {"factor": 0.25, "patience": 2, "mode": "min"}),
])
def test_each_scheduler_name_builds_its_type_with_the_config_settings(name, kind, settings):
    cfg = TrainConfig(scheduler=name, lr=0.1, max_epochs=12, step_size=4, step_gamma=0.3,
                      exp_gamma=0.9, cosine_eta_min=1e-4, onecycle_pct_start=0.25,
                      plateau_factor=0.25, plateau_patience=2)
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1},
              {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.02}]
    opt = build_optimizer(groups, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    assert type(sched) is kind
    assert {k: getattr(sched, k) for k in settings} == settings
    if name == "onecycle":  # one peak per group, warm-up over pct_start of the steps
        assert [g["max_lr"] for g in opt.param_groups] == [0.1, 0.02]
        assert sched._schedule_phases[0]["end_step"] == pytest.approx(0.25 * 60 - 1)


@pytest.mark.parametrize("field", ["optimizer", "scheduler"])
@pytest.mark.parametrize("bad", ["RMSprop", "NSGA-II", None, ""])
def test_unknown_names_never_fall_through_to_a_default(field, bad):
    cfg = TrainConfig(**{field: bad})
    opt = torch.optim.SGD(_params(), lr=0.1)
    with pytest.raises(TunetrackError, match=f"unknown {field} {bad!r}.*allowed: "):
        if field == "optimizer":
            build_optimizer(_params(), cfg)
        else:
            build_scheduler(opt, cfg, 1)
