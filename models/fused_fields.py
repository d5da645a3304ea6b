"""What the members of a fused group share, importable without torch.

`tunetrack validate` checks `search.fuse` against these before anything heavy is imported;
`fused_net` and `fused_train` enforce them when a group is built.
"""

from __future__ import annotations

FUSABLE_FAMILIES = ("mlp", "cnn")
# ModelConfig fields that shape the computation graph: one value for the whole group.
# Everything else (init, dropout) is per member.
SHARED_MODEL_FIELDS = ("family", "depth", "width", "activation", "batch_norm", "kernel_size",
                       "pool", "width_multiplier")
# TrainConfig fields that fix the data stream: one per group. Everything else is per
# member: lr, weight_decay, momentum, nesterov, l1, label_smoothing, early stopping, the
# seed, and even the optimizer and the LR scheduler with their knobs (each member's row is
# updated by its own optimizer and schedule, `fused_optim`).
SHARED_TRAIN_FIELDS = ("max_epochs", "batch_size", "augment", "eval_batch_size", "amp",
                       "compile", "device", "stream")

# On CPU a group gains only while each member's training step is small enough for
# per-operation overhead to dominate it: 8 digits MLPs (3 epochs, Adam/SGD/AdamW, dropout)
# trained 2.4-3.6x faster fused at <= 0.6 M multiply-adds per member step, 2.0-2.3x at
# 0.9-2.4 M, 1.5-1.7x at 3.6-5.4 M, 0.9-1.2x at 10-72 M (docs/fused_trials.md, "On CPU,
# only groups small enough to gain"; 2026-12-01, Intel Xeon VM). Above this a group would
# tie K trials to one architecture and train them more epochs (fewer are pruned) for
# little or no gain. Here, torch-free, so `validate` can say it.
CPU_FUSE_MAX_MACS = 4_000_000


def is_shared(path: str) -> bool:
    """Is the study-file parameter `path` (`model.width`, `train.augment.flip`) shared?"""
    section, _, rest = path.partition(".")
    name = rest.split(".", 1)[0]
    if section == "model":
        return name in SHARED_MODEL_FIELDS
    return section == "train" and name in SHARED_TRAIN_FIELDS
