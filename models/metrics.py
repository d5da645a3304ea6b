"""Classification metrics of predicted labels (scikit-learn does the counting)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ClassificationReport:
    accuracy: float
    confusion: np.ndarray  # (n_classes, n_classes), rows = true class
    report: dict  # sklearn classification_report(output_dict=True)
    per_class_error: dict[str, float]  # 1 - recall per class


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def classification_metrics(y_true: torch.Tensor | np.ndarray, y_pred: torch.Tensor | np.ndarray,
                           classes: list[str]) -> ClassificationReport:
    """Counts on label vectors (tensors or arrays), so it also runs where only the labels
    were sent (the tracking helper)."""
    from sklearn.metrics import classification_report, confusion_matrix

    y_true, y_pred = _numpy(y_true), _numpy(y_pred)
    labels = list(range(len(classes)))
    confusion = confusion_matrix(y_true, y_pred, labels=labels)
    report = classification_report(y_true, y_pred, labels=labels, target_names=classes,
                                   output_dict=True, zero_division=0)
    support = confusion.sum(axis=1)
    errors = 1.0 - np.divide(np.diag(confusion), support, out=np.zeros(len(labels)),
                             where=support > 0)
    return ClassificationReport(
        accuracy=float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        confusion=confusion, report=report,
        per_class_error={c: float(e) for c, e in zip(classes, errors, strict=True)},
    )
