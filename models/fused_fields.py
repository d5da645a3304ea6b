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


def is_shared(path: str) -> bool:
    """Is the study-file parameter `path` (`model.width`, `train.augment.flip`) shared?"""
    section, _, rest = path.partition(".")
    name = rest.split(".", 1)[0]
    if section == "model":
        return name in SHARED_MODEL_FIELDS
    return section == "train" and name in SHARED_TRAIN_FIELDS
