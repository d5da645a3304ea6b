"""Bad names fail early with one line naming the value and what is allowed; no heavy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tunetrack.models import (
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    TrainConfig,
    Trainer,
    TrialConfig,
    TunetrackError,
    apply_init,
    choices,
    create,
    init_schemes,
    load_splits,
    nets,
    optimizers,
    resolve_device,
    trainer_core,
)
from tunetrack.models import data as data_module


def _check(info, bad: str, allowed, close: str | None = None) -> None:
    msg = str(info.value)
    assert "\n" not in msg
    assert repr(bad) in msg
    for name in allowed:
        assert name in msg.split("allowed:")[1], name
    if close is not None:
        assert f"did you mean {close!r}" in msg


def test_unknown_dataset():
    with pytest.raises(TunetrackError) as info:
        load_splits(DataConfig(name="mnist"))
    _check(info, "mnist", choices.DATASETS)


@pytest.mark.parametrize(("field", "bad", "close"), [
    ("activation", "rellu", "relu"),
    ("init", "xavier", None),
    ("family", "transformer", None),
    ("family", "CNN", None),
    ("pool", "maxx", "max"),
])
def test_unknown_model_names(field, bad, close):
    allowed = {"activation": choices.ACTIVATIONS, "init": choices.INIT_SCHEMES,
               "family": choices.FAMILIES, "pool": choices.POOLS}[field]
    family = "cnn" if field == "pool" else "mlp"
    cfg = ModelConfig(**{"family": family, field: bad})
    with pytest.raises(TunetrackError) as info:
        create(cfg, (1, 8, 8), 10)
    _check(info, bad, allowed, close)


def test_unknown_init_scheme_in_apply_init():
    with pytest.raises(TunetrackError) as info:
        apply_init(torch.nn.Linear(2, 2), "kaiming")
    _check(info, "kaiming", choices.INIT_SCHEMES)


@pytest.mark.parametrize(("field", "bad", "allowed", "close"), [
    ("optimizer", "adamm", choices.OPTIMIZERS, "adam"),
    ("optimizer", "lbfgs", choices.OPTIMIZERS, None),
    ("scheduler", "cosine_annealing", choices.SCHEDULERS, None),
    ("scheduler", "steps", choices.SCHEDULERS, "step"),
])
def test_unknown_train_names(splits, field, bad, allowed, close):
    model = create(ModelConfig(width=4, depth=1), splits.input_shape, splits.n_classes)
    with pytest.raises(TunetrackError) as info:
        Trainer(model, TrainConfig(device="cpu", **{field: bad}), splits)
    _check(info, bad, allowed, close)


def test_unknown_monitor(splits):
    model = create(ModelConfig(width=4, depth=1), splits.input_shape, splits.n_classes)
    cfg = TrainConfig(device="cpu", early_stopping=EarlyStoppingConfig(monitor="val_acc"))
    with pytest.raises(TunetrackError) as info:
        Trainer(model, cfg, splits)
    _check(info, "val_acc", choices.MONITORS, "val_accuracy")


def test_bad_device():
    with pytest.raises(TunetrackError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(TunetrackError, match="CUDA is not available"):
            resolve_device("cuda")


def test_trial_config_round_trip_and_unknown_keys():
    cfg = TrialConfig(model=ModelConfig(family="cnn", width=7),
                      train=TrainConfig(early_stopping=EarlyStoppingConfig(patience=3)))
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    raw = cfg.to_dict()
    raw["train"]["early_stopping"]["patiense"] = 2
    with pytest.raises(TunetrackError, match=r"train\.early_stopping: unknown keys \['patiense'\]"):
        TrialConfig.from_dict(raw)
    with pytest.raises(TunetrackError, match="unknown keys"):
        TrialConfig.from_dict({"data": {}, "extra": {}})


def test_registries_hold_exactly_the_published_choices():
    assert tuple(nets.ACTIVATIONS) == choices.ACTIVATIONS
    assert tuple(nets.FAMILIES) == choices.FAMILIES
    assert tuple(init_schemes.INIT_SCHEMES) == choices.INIT_SCHEMES
    assert set(data_module.LOADERS) | {"torchvision"} == set(choices.DATASETS)
    assert tuple(optimizers.OPTIMIZER_BUILDERS) == choices.OPTIMIZERS
    assert tuple(optimizers.SCHEDULER_BUILDERS) == choices.SCHEDULERS
    assert tuple(trainer_core.MONITORS) == choices.MONITORS
    assert choices.FIELD_CHOICES["model.pool"] == choices.POOLS


def test_every_published_choice_builds():
    for family in choices.FAMILIES:
        for act in choices.ACTIVATIONS:
            net = create(ModelConfig(family=family, activation=act, width=4, depth=2),
                         (1, 8, 8), 3)
            assert net(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    for pool in choices.POOLS:
        net = create(ModelConfig(family="cnn", pool=pool, width=4, depth=3), (3, 5, 5), 2)
        assert net(torch.rand(2, 3, 5, 5)).shape == (2, 2)


def test_models_imports_neither_optuna_nor_mlflow():
    code = ("import tunetrack.models, sys\n"
            "from tunetrack.models import Trainer, create, load_splits\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'mlflow'))\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_first_line_of_an_error():
    from tunetrack.models.errors import first_line

    assert first_line(ValueError("\n  cannot connect\ntraceback text\n")) == "cannot connect"
    assert first_line(KeyError()) == "KeyError"

    class Wrapped(Exception):  # MLflow's exceptions carry the text in `.message`
        message = "RESOURCE_DOES_NOT_EXIST: no run\ndetails"

    assert first_line(Wrapped("{'error_code': ...}")) == "RESOURCE_DOES_NOT_EXIST: no run"
