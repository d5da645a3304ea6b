"""The study process's side of tracking (`StudyTracker`, `TrialRun`, the `HELPER` link,
`run_contents`, `code_provenance`); nothing here imports MLflow."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "study": ("LOG_MODEL_POLICIES", "StudyTracker", "start_helper"),
    "trial_run": ("NullRun", "TrialRun"),
    "helper_link": ("HELPER", "Helper"),
    "run_contents": ("CompletedTrial", "model_wanted", "run_fields", "warm_up_files",
                     "write_trial_artifacts"),
    "datasets": ("dataset_inputs",),
    "code_provenance": ("code_folders", "code_records", "code_tags"),
    "disk_full": ("disk_full_line", "full_path"),
})
