"""A small trial trained and logged the way `search.objective` does it, for tracking tests."""

from __future__ import annotations

import optuna

from tunetrack.models import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    Trainer,
    TrialConfig,
    create,
    load_splits,
)
from tunetrack.tracking import StudyTracker

_SPLITS: dict[str, object] = {}


def cached_splits(data: DataConfig):
    """Splits are plain tensors; loading them once per data config keeps the tests fast."""
    if repr(data) not in _SPLITS:
        _SPLITS[repr(data)] = load_splits(data)
    return _SPLITS[repr(data)]


def log_trial(tracker: StudyTracker, study: optuna.Study, data: DataConfig, *, epochs: int,
              lr: float, value: float | None = None, log_model: bool = True,
              width: int = 32) -> int:
    """Train a small MLP, log it as a completed trial and tell `value` (default: best val
    accuracy) to Optuna, so tests choose the ranking independently of test accuracy.
    `log_model=False` logs it through a tracker of the same study with `log_models: none`."""
    splits = cached_splits(data)
    if not log_model:
        tracker = StudyTracker(study_name=tracker.study_name, tracking_uri=tracker.tracking_uri,
                               log_models="none")
        tracker.start_study(study)
    trial = study.ask()
    cfg = TrialConfig(data=data, model=ModelConfig(width=width, depth=1),
                      train=TrainConfig(max_epochs=epochs, lr=lr, device="cpu", seed=0))
    run = tracker.trial_run(trial, {"train.lr": lr}, cfg, device="cpu",
                            data_fingerprint=splits.fingerprint)
    model = create(cfg.model, splits.input_shape, splits.n_classes, splits.mean, splits.std,
                   seed=0)
    trainer = Trainer(model, cfg.train, splits, callbacks=[run])
    fit = trainer.fit()
    value = fit.best.val_accuracy if value is None else value
    run.completed(values=value, model=model, splits=splits,
                  test_eval=trainer.evaluate(splits.test), fit=fit)
    run.end("COMPLETE")
    study.tell(trial, value)
    return trial.number
