"""Study files, search spaces, the Optuna objective, workers and the CLI.

`run_study(spec_or_path, n_trials=...)` is the notebook entry point; it returns the Optuna
study. Imported lazily so `tunetrack --help` stays instant.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SearchSpace", "StudySpec", "load_study_file", "parse_study", "run_study"]


def __getattr__(name: str) -> Any:
    if name == "run_study":
        from .runner import run_study

        return run_study
    if name == "StudySpec":
        from .config import StudySpec

        return StudySpec
    if name in ("load_study_file", "parse_study"):
        from . import study_file

        return getattr(study_file, name)
    if name == "SearchSpace":
        from .space import SearchSpace

        return SearchSpace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
