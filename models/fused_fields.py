"""What the members of a fused group share, importable without torch.

`tunetrack validate` checks `search.fuse` against these before anything heavy is imported;
`fused_net` and `fused_train` enforce them when a group is built.
"""

from __future__ import annotations

from typing import Any

FUSABLE_FAMILIES = ("mlp", "cnn")
# Every field of ModelConfig and TrainConfig is in exactly one list below (a test checks it,
# and trains each MEMBER_ field apart in a group against the same trial alone): a new field
# must be placed, so the fused path can never ignore one silently.
# ModelConfig fields that shape the computation graph: one value for the whole group.
# (`init_args`: the user network's arguments, which shape its graph as depth does ours)
SHARED_MODEL_FIELDS = ("family", "class_path", "init_args", "depth", "width", "activation",
                       "batch_norm", "kernel_size", "pool", "width_multiplier")
MEMBER_MODEL_FIELDS = ("init", "dropout")  # each member's own (its weights, its masks)
# the torchvision family's fields, which no MLP or CNN reads
UNREAD_MODEL_FIELDS = ("backbone", "freeze", "backbone_lr_factor", "weights", "preprocess",
                       "input_size")
# TrainConfig fields that fix the data stream: one per group.
SHARED_TRAIN_FIELDS = ("max_epochs", "batch_size", "augment", "eval_batch_size", "amp",
                       "compile", "device", "stream")
# each member's own: its row is updated by its own optimizer and schedule (`fused_optim`),
# it stops on its own (`trainer_core.EpochBook`); its seed sets its weights and dropout
# masks (the group's data stream follows the first member's seed)
MEMBER_TRAIN_FIELDS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "l1",
                       "label_smoothing", "scheduler", "step_size", "step_gamma", "exp_gamma",
                       "cosine_eta_min", "onecycle_pct_start", "plateau_factor",
                       "plateau_patience", "early_stopping", "seed")

# On CPU a group gains only while each member's training step is small enough for
# per-operation overhead to dominate it: 8 digits MLPs (3 epochs, Adam/SGD/AdamW, dropout)
# trained 2.4-3.6x faster fused at <= 0.6 M multiply-adds per member step, 2.0-2.3x at
# 0.9-2.4 M, 1.5-1.7x at 3.6-5.4 M, 0.9-1.2x at 10-72 M (docs/fused_trials.md, "On CPU,
# only groups small enough to gain"; 2026-12-01, Intel Xeon VM). Above this a group would
# tie K trials to one architecture and train them more epochs (fewer are pruned) for
# little or no gain. Here, torch-free, so `validate` can say it.
CPU_FUSE_MAX_MACS = 4_000_000
# The same rule for the user's own network, which fuses through torch.func (autograd over
# vmapped operations, `fused_functional`) rather than tunetrack's hand-fused layers and
# tape: 8 user MLPs on digits (3 epochs, Adam) trained 1.6-4.1x faster fused at <= 0.6 M,
# 1.0-2.6x at 0.8-1.7 M, 1.0-1.3x at 2.4-5.4 M, 0.7-1.1x at >= 10 M (bench/fused_trials.py
# user-grid; docs/fused_trials.md, 2026-12-07, AMD EPYC VM, Zen 3, other work running).
CPU_FUSE_MAX_MACS_USER = 2_000_000


def cpu_fuse_max_macs(user_network: bool) -> int:
    """The CPU limit on a member's multiply-adds per training step for a group to form."""
    return CPU_FUSE_MAX_MACS_USER if user_network else CPU_FUSE_MAX_MACS


def differences(section: str, names: tuple[str, ...], configs: list[Any]) -> list[str]:
    """The fields of `names` on which `configs` disagree, as `section.FIELD`."""
    return [f"{section}.{name}" for name in names
            if len({repr(getattr(c, name)) for c in configs}) > 1]


def is_shared(path: str) -> bool:
    """Is the study-file parameter `path` (`model.width`, `train.augment.flip`) shared?"""
    section, _, rest = path.partition(".")
    name = rest.split(".", 1)[0]
    if section == "model":
        return name in SHARED_MODEL_FIELDS
    return section == "train" and name in SHARED_TRAIN_FIELDS
