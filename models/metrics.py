"""Classification metrics of predicted labels (scikit-learn does the counting)."""

from __future__ import annotations

from collections.abc import Callable
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


# `search.metric` names measured on the validation split every epoch from the predicted
# probabilities (and once on the test split); scikit-learn computes each, its direction is
# in `choices.SCORE_DIRECTIONS`
def _macro_f1(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return f1_score(y_true, y_prob.argmax(1), labels=list(range(y_prob.shape[1])),
                    average="macro", zero_division=0)


def _balanced_accuracy(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return balanced_accuracy_score(y_true, y_prob.argmax(1))


def _auroc(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """One-vs-rest, macro-averaged over the classes present in `y_true`."""
    from sklearn.metrics import roc_auc_score

    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if y_prob.shape[1] == 2:
        return roc_auc_score(y_true, y_prob[:, 1])
    prob = y_prob[:, present] / y_prob[:, present].sum(1, keepdims=True)
    return roc_auc_score(np.searchsorted(present, y_true), prob, multi_class="ovr",
                         labels=list(range(len(present))))


def _log_loss(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    return log_loss(y_true, y_prob, labels=list(range(y_prob.shape[1])))


ScoreFn = Callable[[np.ndarray, np.ndarray], float]  # fn(y_true, y_prob) -> float
SCORES: dict[str, ScoreFn] = {"macro_f1": _macro_f1, "balanced_accuracy": _balanced_accuracy,
                              "auroc": _auroc, "log_loss": _log_loss}


def score(name: str, fn: ScoreFn, y_true: torch.Tensor, y_prob: torch.Tensor) -> float:
    """`fn(y_true, y_prob)` on numpy arrays, as a finite float; anything else (it raised,
    returned NaN or not a number) is a `UserCodeError` naming the metric: the trial fails
    with that line and the study goes on."""
    from .user_code import UserCodeError, last_line

    try:
        value = float(fn(_numpy(y_true), _numpy(y_prob.float())))
    except Exception as exc:
        raise UserCodeError(f"metric {name}: {last_line(exc)}") from exc
    if not np.isfinite(value):
        raise UserCodeError(f"metric {name} returned {value} (it must be a finite number)")
    return value
