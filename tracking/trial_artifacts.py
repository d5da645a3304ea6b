"""Files describing one completed trial, written into a folder for one upload.

One upload of a folder is much cheaper than one request (or store round trip) per file.
The figures are drawn here, on the caller's thread, on purpose: drawing them on a
background thread was measured to double the training time of the next trial (matplotlib
holds the GIL for long stretches and the training loop needs it between every small op).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from tunetrack.models import ClassificationReport, Evaluation, FitResult, Splits

MAX_MISCLASSIFIED = 25


def write_tables(out: Path, *, splits: Splits, fit: FitResult,
                 report: ClassificationReport) -> pd.DataFrame:
    """confusion_matrix.csv, classification_report.json, per_class_error.csv, history.csv."""
    classes = list(splits.classes)
    confusion = pd.DataFrame(report.confusion, index=pd.Index(classes, name="true"),
                             columns=pd.Index(classes, name="predicted"))
    confusion.to_csv(out / "confusion_matrix.csv")
    (out / "classification_report.json").write_text(json.dumps(report.report, indent=1))
    pd.DataFrame({
        "class": classes, "error": [report.per_class_error[c] for c in classes],
        "support": report.confusion.sum(axis=1), "correct": np.diag(report.confusion),
    }).to_csv(out / "per_class_error.csv", index=False)
    history = pd.DataFrame([asdict(h) for h in fit.history])
    history.to_csv(out / "history.csv", index=False)
    return history


def write_trial_artifacts(out: Path, *, splits: Splits, test_eval: Evaluation,
                          fit: FitResult, report: ClassificationReport) -> list[str]:
    """Tables and figures of a completed trial into `out`; returns the file names."""
    from . import figures

    history = write_tables(out, splits=splits, fit=fit, report=report)
    classes = list(splits.classes)
    figures.draw_confusion(out / "confusion_matrix.png", report.confusion, classes)
    if len(history):
        series = {k: history[k].tolist() for k in history.columns}
        figures.draw_curves(out / "curves.png", series["epoch"], series, fit.best_epoch)
    y_true, predictions = splits.test.y.cpu(), test_eval.predictions.cpu()
    wrong = (predictions != y_true).nonzero().flatten()[:MAX_MISCLASSIFIED]
    if len(wrong):
        figures.draw_misclassified(out / "misclassified.png",
                                   splits.test.x[wrong].cpu().float().numpy(),
                                   y_true[wrong].tolist(), predictions[wrong].tolist(), classes)
    return sorted(p.name for p in out.iterdir())
