"""Plain, fully resolved configuration of one training run.

`search` turns an Optuna trial into these dataclasses; `models` consumes them. They hold
values only (no distributions), so a trial can be replayed from its `trial.yaml` alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# `train.device`: what `device.resolve_device` accepts (whether it exists is known at run time)
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# (field, value holds?, what is allowed): one bound of one config field
Bound = tuple[str, bool, str]
# every seed is a numpy/Optuna seed, which must lie in [0, 2**32 - 1]; derived seeds (split
# seed + 1, study seed + a sampler offset) wrap modulo SEEDS, so any seed in range is usable
SEEDS = 2**32
SEED_ALLOWED = f"in [0, {SEEDS - 1}] (2**32 - 1, numpy's seed range)"


def _seed_bound(seed: Any) -> Bound:
    return ("seed", isinstance(seed, int) and 0 <= seed < SEEDS, SEED_ALLOWED)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _out_of_bounds(where: str, config: Any, bounds: Iterable[Bound]) -> list[str]:
    """"WHERE.FIELD must be ALLOWED but got VALUE" for every bound that does not hold."""
    return [f"{where}.{name} must be {allowed} but got {getattr(config, name)!r}"
            for name, ok, allowed in bounds if not ok]


class Checked:
    """A config that knows its own bad values: `problems()` lists them (import-light: no
    torch, so `tunetrack validate` runs the very rules the trainer runs), `check()` raises.

    Every rule about one field holds on an interval or a set, so a searched range whose two
    ends pass passes everywhere in between (what the validator relies on); the only rule
    across fields (`dataset` fractions) sits in `DataConfig`, whose values are never searched.
    """

    def problems(self) -> list[str]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise one `TunetrackError` line naming every bad field, before any work starts."""
        from .errors import TunetrackError

        problems = self.problems()
        if problems:
            raise TunetrackError("; ".join(problems))


@dataclass
class DataConfig(Checked):
    name: str = "digits"  # digits | imagefolder | torchvision | synthetic | a plugin's name
    # the user's own dataset: an import path to a callable returning one torch Dataset (split
    # here) or a mapping {train, val, test} of them; called with `init_args`
    class_path: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    path: str | None = None  # imagefolder: folder of class sub-folders
    id: str | None = None  # torchvision: dataset class name, e.g. FashionMNIST
    root: str | None = None  # torchvision: local root holding the files (never downloads)
    image_size: int | None = None  # resize to this square size (imagefolder default 64)
    channels: int | None = None  # force 1 (grayscale) or 3 (RGB); None keeps the source's
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0  # fixes the split, independent of the trial seed
    max_samples: int | None = None  # stratified subsample, for quick experiments
    # synthetic only
    n_samples: int = 512
    n_classes: int = 4
    shape: tuple[int, int, int] = (1, 8, 8)

    def problems(self) -> list[str]:
        """Bad values under the study file's names (`dataset.*`)."""
        val, test = self.val_fraction, self.test_fraction
        out = _out_of_bounds("dataset", self, [
            ("val_fraction", 0 < val < 1, "in (0, 1)"),
            ("test_fraction", 0 < test < 1,
             "in (0, 1) (the test split scores each completed trial and decides promotion)"),
            ("image_size", self.image_size is None or self.image_size >= 1, ">= 1 (pixels)"),
            ("channels", self.channels in (None, 1, 3), "1 (grayscale) or 3 (RGB)"),
            ("max_samples", self.max_samples is None or self.max_samples >= 1, ">= 1"),
            _seed_bound(self.seed),
            ("n_samples", self.n_samples >= 1, ">= 1"),
            ("n_classes", self.n_classes >= 2, ">= 2"),
            ("shape", len(self.shape) == 3 and min(self.shape) >= 1,
             "3 sizes >= 1 (channels, height, width)"),
        ])
        if not out and val + test >= 1:
            out.append(f"dataset.val_fraction + dataset.test_fraction must be < 1 (the rest "
                       f"is the training split) but got {val!r} + {test!r}")
        return out


@dataclass
class ModelConfig(Checked):
    family: str = "mlp"  # mlp | cnn | resnet | torchvision (pretrained backbone, new head)
    # | a plugin's name (entry-point group tunetrack.models)
    # the user's own network: an import path to a callable returning an nn.Module, called
    # with `init_args` (+ num_classes and in_shape when its signature names them)
    class_path: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    depth: int = 2  # mlp: hidden layers; cnn: conv blocks; resnet: residual stages
    width: int = 128  # mlp: hidden units; cnn/resnet: channels of the first block
    activation: str = "relu"
    init: str = "default"
    dropout: float = 0.0
    batch_norm: bool = False
    kernel_size: int = 3  # cnn
    pool: str = "max"  # cnn: max | avg | none (stride-2 conv instead)
    width_multiplier: float = 2.0  # cnn/resnet: channel growth per block
    # torchvision family (models/transfer.py; stages per backbone in the README)
    backbone: str = "resnet18"  # resnet18/34/50, vgg11_bn, vgg16_bn, efficientnet_b0, ...
    freeze: int = 0  # leading stages kept frozen (no gradients, BatchNorm in eval mode)
    backbone_lr_factor: float = 1.0  # unfrozen backbone lr = train.lr * this (head: train.lr)
    # a state_dict file ("{backbone}" is replaced by the backbone's name) or a torchvision
    # weights name (DEFAULT, IMAGENET1K_V1) from torchvision's cache; None: random init
    weights: str | None = None
    preprocess: str = "auto"  # auto | imagenet | dataset: input mean/std (auto: by weights)
    # side the backbone sees (the model resizes its input); None: the preset's 224 with
    # imagenet preprocessing, else the images' own size; a study's dataset.image_size sets it
    input_size: int | None = None

    def problems(self) -> list[str]:
        """Bad sizes and rates; names (family, activation, ...) are checked by their
        registries in `nets`, the number of a backbone's stages by `choices.freeze_problem`."""
        return _out_of_bounds("model", self, [
            ("depth", self.depth >= 1, ">= 1"),
            ("width", self.width >= 1, ">= 1"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
            ("kernel_size", self.kernel_size >= 1, ">= 1"),
            ("width_multiplier", _finite(self.width_multiplier) and self.width_multiplier > 0,
             "> 0 and finite"),
            ("freeze", self.freeze >= 0, ">= 0 (leading stages kept frozen)"),
            ("backbone_lr_factor",
             _finite(self.backbone_lr_factor) and self.backbone_lr_factor > 0,
             "> 0 and finite (freeze stages with model.freeze instead)"),
            ("input_size", self.input_size is None or self.input_size >= 1, ">= 1 (pixels)"),
        ])


@dataclass
class AugmentConfig(Checked):
    """Training-split augmentation; every knob's zero (crop_scale: 1) means off.

    A study searches on/off and strength in one parameter by including the off value, e.g.
    `rotation: {float: [0, 20], step: 5}` or `mixup_alpha: {choice: [0.0, 0.2, 0.4]}`.
    """

    crop_padding: int = 0  # random shift by up to this many pixels (zero fill)
    crop_scale: float = 1.0  # random resized crop: min area fraction in (0, 1]; 1 = off
    crop_ratio: float = 4 / 3  # ... aspect ratio log-uniform in [1/r, r] (r >= 1)
    flip: bool = False  # random horizontal flip
    rotation: float = 0.0  # max degrees, uniform in [-rotation, rotation]
    brightness: float = 0.0  # multiplicative factor in [1-b, 1+b], b in [0, 1]
    contrast: float = 0.0  # contrast factor in [1-c, 1+c], c in [0, 1]
    mixup_alpha: float = 0.0  # mixup: lam ~ Beta(a, a) per batch; 0 = off
    cutmix_alpha: float = 0.0  # cutmix: box area ~ Beta(a, a); both on: one per batch

    @property
    def enabled(self) -> bool:
        """Whether any per-sample transform (not mixing) is on."""
        return bool(self.crop_padding or self.crop_scale < 1 or self.flip or self.rotation
                    or self.brightness or self.contrast)

    @property
    def mixing(self) -> bool:
        """Whether batches are mixed (mixup and/or cutmix), which needs soft targets."""
        return bool(self.mixup_alpha or self.cutmix_alpha)

    def problems(self) -> list[str]:
        """Out-of-range values, one line each naming the field (import-light: no torch)."""
        return _out_of_bounds("train.augment", self, [
            ("crop_padding", self.crop_padding >= 0, ">= 0 (pixels)"),
            ("crop_scale", 0 < self.crop_scale <= 1, "in (0, 1] (1 = off)"),
            ("crop_ratio", self.crop_ratio >= 1, ">= 1 (1 keeps the aspect ratio)"),
            ("rotation", 0 <= self.rotation <= 180, "in [0, 180] (degrees)"),
            ("brightness", 0 <= self.brightness <= 1, "in [0, 1]"),
            ("contrast", 0 <= self.contrast <= 1, "in [0, 1]"),
            ("mixup_alpha", self.mixup_alpha >= 0, ">= 0 (0 = off)"),
            ("cutmix_alpha", self.cutmix_alpha >= 0, ">= 0 (0 = off)"),
        ])


@dataclass
class EarlyStoppingConfig(Checked):
    patience: int | None = None  # epochs without improvement; None disables
    min_delta: float = 0.0
    monitor: str = "val_loss"  # val_loss | val_accuracy

    def problems(self) -> list[str]:
        return _out_of_bounds("train.early_stopping", self, [
            ("patience", self.patience is None or self.patience >= 1,
             ">= 1 (epochs without improvement) or null (never stop early)"),
            ("min_delta", _finite(self.min_delta) and self.min_delta >= 0, ">= 0 and finite"),
        ])


@dataclass
class TrainConfig(Checked):
    max_epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adam"  # sgd | adam | adamw | rmsprop
    lr: float = 1e-3
    momentum: float = 0.9  # sgd / rmsprop
    nesterov: bool = False  # sgd
    weight_decay: float = 0.0  # L2, through the optimizer
    l1: float = 0.0  # explicit L1 penalty on weights, added to the loss
    label_smoothing: float = 0.0
    scheduler: str = "none"  # none | step | exponential | cosine | onecycle | plateau
    step_size: int = 10  # step: epochs between decays
    step_gamma: float = 0.5  # step
    exp_gamma: float = 0.95  # exponential
    cosine_eta_min: float = 0.0  # cosine (T_max = max_epochs)
    onecycle_pct_start: float = 0.3  # onecycle (max_lr = lr)
    plateau_factor: float = 0.5  # plateau
    plateau_patience: int = 3  # plateau
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval_batch_size: int = 4096  # CPU: at most CPU_EVAL_BATCH (trainer_core.py)
    amp: bool = True  # autocast on CUDA (bf16 where supported, else fp16); CPU: fp32
    compile: bool = False  # torch.compile the model
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    stream: bool | None = None  # force the DataLoader path (True) or resident tensors (False)

    def problems(self) -> list[str]:
        """Bad numbers and devices, then `early_stopping` and `augment`; the optimizer and
        scheduler names are checked by their registries in `train`."""
        rate, nonneg = "in (0, 1] (a factor per decay)", ">= 0 and finite"
        return _out_of_bounds("train", self, [
            ("max_epochs", self.max_epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", _finite(self.lr) and self.lr > 0, "> 0 and finite"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", _finite(self.weight_decay) and self.weight_decay >= 0, nonneg),
            ("l1", _finite(self.l1) and self.l1 >= 0, nonneg),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("step_size", self.step_size >= 1, ">= 1 (epochs)"),
            ("step_gamma", 0 < self.step_gamma <= 1, rate),
            ("exp_gamma", 0 < self.exp_gamma <= 1, rate),
            ("cosine_eta_min", _finite(self.cosine_eta_min) and self.cosine_eta_min >= 0,
             nonneg),
            ("onecycle_pct_start", 0 < self.onecycle_pct_start < 1, "in (0, 1)"),
            ("plateau_factor", 0 < self.plateau_factor < 1, "in (0, 1)"),
            ("plateau_patience", self.plateau_patience >= 0, ">= 0 (epochs)"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            _seed_bound(self.seed),
            ("device", isinstance(self.device, str) and bool(DEVICE_PATTERN.fullmatch(
                self.device)), "auto, cpu, cuda, cuda:N or mps"),
        ]) + self.early_stopping.problems() + self.augment.problems()


@dataclass
class TrialConfig(Checked):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def problems(self) -> list[str]:
        return self.data.problems() + self.model.problems() + self.train.problems()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrialConfig:
        """Inverse of `to_dict`; unknown keys are errors so stale files are noticed."""
        from .errors import TunetrackError

        def build(kind: type, values: dict[str, Any], where: str) -> Any:
            names = {f.name: f for f in fields(kind)}
            extra = set(values) - set(names)
            if extra:
                raise TunetrackError(f"{where}: unknown keys {sorted(extra)}")
            out = dict(values)
            nested = {"early_stopping": EarlyStoppingConfig, "augment": AugmentConfig}
            for key, sub in nested.items():
                if key in out and isinstance(out[key], dict):
                    out[key] = build(sub, out[key], f"{where}.{key}")
            if "shape" in out and out["shape"] is not None:
                out["shape"] = tuple(out["shape"])
            return kind(**out)

        extra = set(raw) - {"data", "model", "train"}
        if extra:
            raise TunetrackError(f"trial config: unknown keys {sorted(extra)}")
        return cls(
            data=build(DataConfig, raw.get("data", {}), "data"),
            model=build(ModelConfig, raw.get("model", {}), "model"),
            train=build(TrainConfig, raw.get("train", {}), "train"),
        )
