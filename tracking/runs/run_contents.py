"""What a trial's MLflow run holds: decided here and only here.

- When the trial starts (`run_fields`): params (the sampled values and the trial number),
  tags (study, trial number, device, data fingerprint, torch / CUDA / git versions, the
  user's code it runs: `code_provenance.py`) and
  `trial.yaml`, the resolved config that replays the trial.
- Every epoch: the `EpochResult` metrics, `step=epoch` (`TrialRun.on_epoch_end`).
- When it completes (`CompletedTrial.collect`): the final metrics, the tables and figures
  of `write_trial_artifacts`, and the model when `model_wanted` says so.
- When it ends: `optuna.state` and `optuna.reason`, status FINISHED / KILLED / FAILED.

`collect` runs in the trial's process and takes what the files need from the live objects
(a CPU copy of the model, labels and predictions as arrays, a few images, the history):
cheap, and safe to pickle while the next trial trains. The helper process then draws and
writes everything into one folder, uploaded in one call.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import tags as T
from ..directions import better, dominates

if TYPE_CHECKING:
    import numpy as np
    import optuna
    import pandas as pd
    import torch

    from tunetrack.models import ClassificationReport, Evaluation, FitResult, Splits
    from tunetrack.models.config import TrialConfig

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

    @classmethod
    def collect(cls, *, model: torch.nn.Module, splits: Splits, test_eval: Evaluation,
                fit: FitResult, log_model: bool) -> CompletedTrial:
        import numpy as np

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
            log_model=log_model)


def write_tables(out: Path, done: CompletedTrial, report: ClassificationReport
                 ) -> pd.DataFrame:
    """confusion_matrix.csv, classification_report.json, per_class_error.csv, history.csv;
    returns the history frame."""
    import numpy as np
    import pandas as pd

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
    """Tables and figures of a completed trial into `out`; returns the file names. A
    picture that does not apply (first_layer.png of a model without Linear/Conv2d layers,
    curves of an empty history) is left out."""
    from tunetrack.models import classification_metrics

    from .. import pictures

    report = classification_metrics(done.y_true, done.y_pred, done.classes)
    history = write_tables(out, done, report)
    pictures.draw_confusion(out / "confusion_matrix.png", report.confusion, done.classes)
    support = report.confusion.sum(axis=1)
    pictures.draw_per_class_error(out / "per_class_error.png", {
        c: report.per_class_error[c] for c in done.classes}, support)
    if len(done.wrong_true):
        pictures.draw_misclassified(out / "misclassified.png", done.wrong_images,
                                    done.wrong_true, done.wrong_pred, done.classes)
    if len(history):
        pictures.draw_curves(out / "curves.png", history, done.best_epoch)
        pictures.draw_lr_curve(out / "lr.png", history)
    pictures.draw_first_layer(out / "first_layer.png", done.model, done.images.shape[1:])
    pictures.draw_feature_maps(out / "feature_maps.png", done.model, done.images)
    return sorted(p.name for p in out.iterdir())


def warm_up_files(out: Path) -> None:
    """Write a tiny made-up completed trial's files into `out` (then thrown away): the
    first trial's files cost 1.27 s in a fresh process and 0.28 s afterwards (fonts,
    colormaps, text layout, each figure type's first use), so the helper pays that while
    the first trial trains, not after it."""
    import numpy as np

    from tunetrack.models import EpochResult, ModelConfig, create

    rng = np.random.default_rng(0)
    shape, classes = (1, 8, 8), [str(c) for c in range(10)]
    model = create(ModelConfig(family="mlp", depth=1, width=8), shape, len(classes),
                   None, None, seed=0).eval()
    y_true, y_pred = rng.integers(0, 10, 40), rng.integers(0, 10, 40)
    images = rng.random((EXAMPLE_IMAGES, *shape), dtype=np.float32)
    history = [asdict(EpochResult(epoch=e, train_loss=1.0 / (e + 1), train_accuracy=0.5,
                                  val_loss=1.0 / (e + 1), val_accuracy=0.5, lr=1e-3,
                                  epoch_seconds=0.1)) for e in range(3)]
    write_trial_artifacts(out, CompletedTrial(
        model=model, classes=classes, input_shape=shape, data_fingerprint="warm-up",
        y_true=y_true, y_pred=y_pred, images=images, wrong_images=images[:3],
        wrong_true=[0, 1, 2], wrong_pred=[1, 2, 3], history=history, best_epoch=2,
        stop_reason="completed", values={}, log_model=False))


def run_fields(trial_number: int, params: dict[str, object], config: TrialConfig, *,
               study_name: str, device: str, data_fingerprint: str,
               code: Mapping[str, str] | None = None
               ) -> tuple[dict[str, str], dict[str, str], str]:
    """(params, tags, trial.yaml text) of a trial's run when it starts; `code`: {role:
    import path} of the user's code it runs, recorded as `code_provenance` tags."""
    import yaml

    from .code_provenance import code_tags

    tags = {T.STUDY: study_name, T.ROLE: T.ROLE_TRIAL, T.OPTUNA_STUDY: study_name,
            T.OPTUNA_TRIAL: str(trial_number), T.DEVICE: str(device),
            T.DATA_FINGERPRINT: data_fingerprint, **T.runtime_tags(),
            **code_tags(code or {})}
    values = {**{k: T.clip(str(v), 6000) for k, v in params.items()},
              T.TRIAL_NUMBER_PARAM: str(trial_number)}
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return values, tags, yaml.dump(config.to_dict(), Dumper=dumper, sort_keys=False)


def model_wanted(policy: str, study: optuna.Study, value: float | Sequence[float]) -> bool:
    """Does a completed trial that reached `value` get its model logged? `all`: yes;
    `none`: no; `best`: when no completed trial of the study (any worker's) is better
    (one objective) or dominates it (several), so the best model so far is logged as
    soon as it is the best."""
    if policy != "best":
        return policy == "all"
    from optuna.trial import TrialState

    directions = [d.name for d in study.directions]
    values = [value] if isinstance(value, Real) else list(value)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if len(directions) == 1:
            if better(trial.values[0], values[0], directions[0]):
                return False
        elif dominates(trial.values, values, directions):
            return False
    return True
