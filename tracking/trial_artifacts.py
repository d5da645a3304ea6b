"""Files describing one completed trial: collected in the trial's process, written in the
sidecar's (see `sidecar.py`).

`CompletedTrial.collect` takes what the files need from the live objects (a CPU copy of
the model, labels and predictions as arrays, a few images, the history): cheap, and safe
to pickle while the next trial trains. `write_trial_artifacts` then draws and writes
everything into one folder, uploaded in one call (much cheaper than one request per file).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

    from tunetrack.models import ClassificationReport, Evaluation, FitResult, Splits

MAX_MISCLASSIFIED = 25
EXAMPLE_IMAGES = 5  # > 1 so the exported model keeps a dynamic batch dimension


@dataclass
class CompletedTrial:
    """Everything the report of one completed trial is made of, as plain picklable data."""

    model: torch.nn.Module  # CPU copy, eval mode
    classes: list[str]
    input_shape: tuple[int, ...]
    data_fingerprint: str
    y_true: np.ndarray  # test labels
    y_pred: np.ndarray  # test predictions
    images: np.ndarray  # the first EXAMPLE_IMAGES test images: model input example
    wrong_images: np.ndarray  # up to MAX_MISCLASSIFIED misclassified test images...
    wrong_true: list[int]  # ...their labels
    wrong_pred: list[int]  # ...and predictions
    history: list[dict[str, Any]]  # one row per epoch (EpochResult fields)
    best_epoch: int | None
    stop_reason: str
    values: dict[str, float]  # final metrics: test_accuracy, best_val_accuracy, ...
    log_model: bool
    hold_model: bool = False  # log the model only if no better trial replaced it by the end

    @classmethod
    def collect(cls, *, model: torch.nn.Module, splits: Splits, test_eval: Evaluation,
                fit: FitResult, log_model: bool, hold_model: bool = False) -> CompletedTrial:
        from tunetrack.models import count_parameters

        model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
        cpu_model = copy.deepcopy(model).to("cpu").eval()
        y_true, y_pred = splits.test.y.cpu(), test_eval.predictions.cpu()
        wrong = (y_pred != y_true).nonzero().flatten()[:MAX_MISCLASSIFIED]
        test_x = splits.test.x
        values = {"test_accuracy": test_eval.accuracy, "test_loss": test_eval.loss,
                  "epochs_run": fit.epochs_run, "param_count": count_parameters(model),
                  "train_seconds": sum(h.epoch_seconds for h in fit.history)}
        if fit.best is not None:
            best = fit.best
            values.update(best_epoch=best.epoch, best_val_accuracy=best.val_accuracy,
                          best_val_loss=best.val_loss, best_train_accuracy=best.train_accuracy,
                          best_train_loss=best.train_loss)
        return cls(
            model=cpu_model, classes=list(splits.classes),
            input_shape=tuple(splits.input_shape), data_fingerprint=splits.fingerprint,
            y_true=y_true.numpy(), y_pred=y_pred.numpy(),
            images=np.ascontiguousarray(test_x[:EXAMPLE_IMAGES].cpu().float().numpy()),
            wrong_images=test_x[wrong.to(test_x.device)].cpu().float().numpy(),
            wrong_true=y_true[wrong].tolist(), wrong_pred=y_pred[wrong].tolist(),
            history=[asdict(h) for h in fit.history], best_epoch=fit.best_epoch,
            stop_reason=fit.stop_reason, values={k: float(v) for k, v in values.items()},
            log_model=log_model, hold_model=hold_model)


def write_tables(out: Path, done: CompletedTrial, report: ClassificationReport
                 ) -> pd.DataFrame:
    """confusion_matrix.csv, classification_report.json, per_class_error.csv, history.csv;
    returns the history frame."""
    classes = list(done.classes)
    confusion = pd.DataFrame(report.confusion, index=pd.Index(classes, name="true"),
                             columns=pd.Index(classes, name="predicted"))
    confusion.to_csv(out / "confusion_matrix.csv")
    (out / "classification_report.json").write_text(json.dumps(report.report, indent=1))
    pd.DataFrame({
        "class": classes, "error": [report.per_class_error[c] for c in classes],
        "support": report.confusion.sum(axis=1), "correct": np.diag(report.confusion),
    }).to_csv(out / "per_class_error.csv", index=False)
    history = pd.DataFrame(done.history)
    history.to_csv(out / "history.csv", index=False)
    return history


def write_trial_artifacts(out: Path, done: CompletedTrial) -> list[str]:
    """Tables and figures of a completed trial into `out`; returns the file names."""
    from tunetrack.models import classification_metrics

    from . import figures
    from .insight import write_insight_artifacts

    report = classification_metrics(done.y_true, done.y_pred, done.classes)
    history = write_tables(out, done, report)
    figures.draw_confusion(out / "confusion_matrix.png", report.confusion, done.classes)
    if len(done.wrong_true):
        figures.draw_misclassified(out / "misclassified.png", done.wrong_images,
                                   done.wrong_true, done.wrong_pred, done.classes)
    write_insight_artifacts(out, model=done.model, images=done.images, classes=done.classes,
                            history=history, best_epoch=done.best_epoch,
                            per_class_error=report.per_class_error,
                            support=report.confusion.sum(axis=1))
    return sorted(p.name for p in out.iterdir())
