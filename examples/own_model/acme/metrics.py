"""The metric: `fn(y_true, y_prob) -> float` on the validation split every epoch (what the
pruner watches) and once on the test split; its `direction` says which way is better."""

from __future__ import annotations

import numpy as np


def worst_class_recall(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """The recall of the class the model gets most wrong: high only when no class is left
    behind, however small."""
    pred = y_prob.argmax(1)
    return float(min((pred[y_true == c] == c).mean() for c in np.unique(y_true)))


worst_class_recall.direction = "maximize"
