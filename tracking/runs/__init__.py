"""The study process's side of tracking: `StudyTracker` (the study and its shared parent
run), `TrialRun` (a trial's run, the trainer's epoch callback), `HELPER` (the link to the
helper process that does all MLflow writing) and `run_contents` (the one place that decides
what a trial's run holds). Nothing here imports MLflow.
"""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "study": ("LOG_MODEL_POLICIES", "StudyTracker", "start_helper"),
    "trial_run": ("NullRun", "TrialRun"),
    "helper_link": ("HELPER", "Helper"),
    "run_contents": ("CompletedTrial", "model_wanted", "run_fields", "warm_up_files",
                     "write_trial_artifacts"),
    "datasets": ("dataset_inputs",),
})
