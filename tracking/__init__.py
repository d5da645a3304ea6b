"""MLflow tracking for Optuna studies, in rooms (each sub-package's `__init__` is its only
door and says what it holds):

- `store/`: which MLflow store (`resolve_tracking_uri`: `--tracking-uri`,
  `MLFLOW_TRACKING_URI`, else `./mlflow.db`), checked before anything is created
  (`check_reachable`: bad input is an error, nothing half-written); SQLite helpers (WAL,
  what a file holds, a file lock) that search's Optuna storage shares; the client.
- `runs/`: the study process's side. `StudyTracker`: one experiment per study and one
  parent run shared by every worker and resume; `start_study`, `trial_run` per trial,
  `finish_study` (plots, trials.csv, best params on the parent). `TrialRun`: a trial's
  child run as the trial sees it, and the trainer's epoch callback; it never raises and
  never waits on MLflow (`NullRun` stands in when tracking is off or the helper is gone);
  `end` links run and trial both ways (`user_attrs["mlflow_run_id"]`, tag and param
  `optuna.trial_number`). `run_contents`: the one place that decides what a trial's run
  holds (params, tags, epoch and final metrics, files, the model under `log_models`).
- `helper_process/`: all MLflow writing happens in this child process, in order, on a
  quick and a slow lane, while the trials train; a failing store costs warnings, never
  Optuna data.
- `pictures/`: a trial's figures, the study's plots (and the plot drawer process).
- `registry/`: promotion of the best model, its statistics, model files.
- `reading/`: the trials table, the HTML report, cost, predictions.
- `tags`, `directions`, `provenance`: small names every room shares.

    tracker = StudyTracker(study_name="digits-mlp")
    tracker.check_reachable()            # before any training
    tracker.start_study(study)
    run = tracker.trial_run(trial, params, cfg, device="cpu", data_fingerprint=fp)
    Trainer(..., callbacks=[run]).fit()  # run.on_epoch_end logs every epoch
    run.completed(values=value, model=model, splits=splits, test_eval=test, fit=fit)
    run.end("COMPLETE")
    tracker.finish_study(study)
    promote(study, model_name="digits-classifier")

Importing this package (or a door) is cheap: MLflow, matplotlib and Optuna's plotting load
only when a name is first used (`lazy.py`), and in the study process only for reading
(`compare_trials`, `promote`, `report`).
"""

from .lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "runs": ("NullRun", "StudyTracker", "TrialRun"),
    "registry": ("PromotionResult", "promote", "promotion_history"),
    "reading": ("compare_trials", "predict", "write_report"),
    "store": ("check_reachable", "resolve_tracking_uri"),
})
