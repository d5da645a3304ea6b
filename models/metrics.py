"""Classification metrics on a split (scikit-learn does the counting)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import Split


@dataclass
class ClassificationReport:
    accuracy: float
    confusion: np.ndarray  # (n_classes, n_classes), rows = true class
    report: dict  # sklearn classification_report(output_dict=True)
    per_class_error: dict[str, float]  # 1 - recall per class


def classification_metrics(split: Split, predictions: torch.Tensor,
                           classes: list[str]) -> ClassificationReport:
    from sklearn.metrics import classification_report, confusion_matrix

    y_true = split.y.cpu().numpy()
    y_pred = predictions.cpu().numpy()
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
