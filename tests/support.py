"""Plain helper functions shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def errors_of(raw: dict) -> list[str]:
    """The error lines of a study file that must not validate (fails when it validates)."""
    from tunetrack.search.study_file import StudyFileError, parse_study

    with pytest.raises(StudyFileError) as info:
        parse_study(raw, "s.yaml")
    return info.value.errors


def orphan_trial(url: str, study_name: str = "made") -> int:
    """Add to the study a RUNNING trial whose process is gone (as after kill -9); its number."""
    import optuna
    from optuna.distributions import FloatDistribution

    from tunetrack.search.stale_trials import OWNER_ATTR, this_process

    study = optuna.load_study(study_name=study_name, storage=url)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    trial = study.ask({"train.lr": FloatDistribution(1e-4, 1e-1, log=True)})
    study._storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR,
                                         {**this_process(), "pid": gone.pid, "start": "1"})
    return trial.number
