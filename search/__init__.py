"""Study files, search spaces, the Optuna objective, workers and the CLI.

`run_study(spec_or_path, n_trials=...)` is the notebook entry point; it returns the Optuna
study. Imported lazily so `tunetrack --help` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"SearchSpace": "space", "StudySpec": "config", "load_study_file": "study_file",
            "parse_study": "study_file", "run_study": "runner"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
