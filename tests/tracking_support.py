"""A small trial trained and logged the way `search.objective` does it, for tracking tests."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tunetrack.models import (
    DataConfig,
    EpochResult,
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


def run_trial(tracker: StudyTracker, study: optuna.Study, data: DataConfig, *, lr: float,
              epochs: int = 2, outcome: str = "complete", value: float | None = None,
              width: int = 32, seed: int | None = 0):
    """What `search.objective` does, in miniature: sample `train.lr` (enqueued as `lr`),
    train a small MLP with the trial's run and a pruning reporter as callbacks, end the run
    and tell Optuna. `outcome`: "complete", "prune" (at epoch 1) or "fail" (raises after
    epoch 1 was logged). `value` (default: best val accuracy) is what Optuna is told, so
    tests choose the ranking independently of test accuracy; `seed=None` seeds with the
    trial number. Returns (trial number, run, model; None when the trial failed)."""
    splits = cached_splits(data)
    study.enqueue_trial({"train.lr": lr})
    trial = study.ask()
    trial.suggest_float("train.lr", 1e-4, 1.0, log=True)
    seed = trial.number if seed is None else seed
    cfg = TrialConfig(data=data, model=ModelConfig(width=width, depth=1),
                      train=TrainConfig(max_epochs=epochs, lr=lr, device="cpu", seed=seed))
    run = tracker.trial_run(trial, trial.params, cfg, device="cpu",
                            data_fingerprint=splits.fingerprint)

    class Reporter:
        def on_epoch_end(self, result: EpochResult) -> bool:
            trial.report(result.val_accuracy, result.epoch)
            if outcome == "fail" and result.epoch == 1:
                raise RuntimeError("loss exploded")
            return outcome == "prune" and result.epoch == 1

    model = create(cfg.model, splits.input_shape, splits.n_classes, splits.mean, splits.std,
                   seed=seed)
    trainer = Trainer(model, cfg.train, splits, callbacks=[run, Reporter()])
    try:
        fit = trainer.fit()
    except RuntimeError as exc:
        run.end("FAIL", f"RuntimeError: {exc}")
        study.tell(trial, state=TrialState.FAIL)
        return trial.number, run, None
    if outcome == "prune":
        run.end("PRUNED", "pruned at epoch 1 (median pruner)")
        study.tell(trial, state=TrialState.PRUNED)
        return trial.number, run, model
    value = fit.best.val_accuracy if value is None else value
    run.completed(values=value, model=model, splits=splits,
                  test_eval=trainer.evaluate(splits.test), fit=fit)
    run.end("COMPLETE")
    study.tell(trial, value)
    return trial.number, run, model


def log_trial(tracker: StudyTracker, study: optuna.Study, data: DataConfig, *, epochs: int,
              lr: float, value: float | None = None, log_model: bool = True,
              width: int = 32) -> int:
    """A completed `run_trial` (seed 0); returns its number. `log_model=False` logs it
    through a tracker of the same study with `log_models: none`."""
    if not log_model:
        tracker = StudyTracker(study_name=tracker.study_name, tracking_uri=tracker.tracking_uri,
                               log_models="none")
        tracker.start_study(study)
    return run_trial(tracker, study, data, lr=lr, epochs=epochs, value=value, width=width)[0]
