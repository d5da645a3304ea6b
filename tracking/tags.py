"""Names of the tags, params and Optuna user attributes that link the two worlds.

Kept in one place so `search`, the tests and a person writing an MLflow search filter use
the same spelling. Runtime tags (torch/CUDA version, git commit) are computed once per
process: they cannot change while it runs.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import os
import subprocess

# MLflow's own tags (the UI knows them)
PARENT_RUN_ID = "mlflow.parentRunId"
GIT_COMMIT = "mlflow.source.git.commit"
USER = "mlflow.user"
# the experiment's kind: the UI otherwise infers one, GenAI for an experiment without runs
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"

# which study / role a run has; parent runs are found by these two
STUDY = "tunetrack.study"
ROLE = "tunetrack.role"
ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"

OPTUNA_STUDY = "optuna.study"
OPTUNA_TRIAL = "optuna.trial_number"
OPTUNA_STATE = "optuna.state"  # COMPLETE | PRUNED | FAIL
OPTUNA_REASON = "optuna.reason"
OPTUNA_DIRECTIONS = "optuna.directions"

DEVICE = "device"
TORCH_VERSION = "torch_version"
CUDA_VERSION = "cuda_version"
GIT_SHA = "git_sha"
GIT_DIRTY = "git_dirty"
DATA_FINGERPRINT = "data_fingerprint"
MODEL_ID = "tunetrack.model_id"  # LoggedModel id of the trial's model, when one was logged
STOP_REASON = "tunetrack.stop_reason"
TRIAL = "tunetrack.trial"
# the user's code a trial ran: `tunetrack.code.<role>` = its import path and
# `tunetrack.code.<role>.<field>` = file, sha256, package, version, folder (runs/code_provenance.py)
CODE = "tunetrack.code"

TRIAL_NUMBER_PARAM = "trial_number"  # a param too: a tag alone cannot be plotted

# Optuna user attributes
ATTR_RUN_ID = "mlflow_run_id"
ATTR_PARENT_RUN_ID = "mlflow_parent_run_id"
ATTR_TEST_ACCURACY = "test_accuracy"
ATTR_EPOCHS_RUN = "epochs_run"

# Optuna trial state -> MLflow run status
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

MAX_TAG_CHARS = 5000  # MLflow stores up to 8000; leave room for multi-byte characters


def clip(text: str, limit: int = MAX_TAG_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def _git(cwd: str, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_tags(cwd: str | None = None) -> dict[str, str]:
    """Commit (and whether tracked files differ from it) of the repo at `cwd`, if any."""
    cwd = cwd or os.getcwd()
    sha = _git(cwd, "rev-parse", "HEAD")
    if not sha:
        return {}
    dirty = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    tags = {GIT_SHA: sha, GIT_COMMIT: sha}
    if dirty is not None:
        tags[GIT_DIRTY] = str(bool(dirty)).lower()
    return tags


@functools.cache
def _runtime_tags() -> dict[str, str]:
    import torch

    tags = {TORCH_VERSION: torch.__version__, CUDA_VERSION: torch.version.cuda or "none"}
    with contextlib.suppress(KeyError, OSError):  # no passwd entry in some containers
        tags[USER] = getpass.getuser()
    return tags


def runtime_tags() -> dict[str, str]:
    """torch/CUDA versions, user and git commit (computed once per process and folder),
    package versions, CPU/GPU and torch threads (`provenance`, for `tunetrack reproduce`)."""
    from .provenance import environment_tags

    return {**_runtime_tags(), **environment_tags(), **git_tags()}
