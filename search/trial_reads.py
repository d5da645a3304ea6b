"""Reads that cost what they show: a study's trial counts, its latest trials and its
RUNNING ones, without building every trial of a 10,000-trial study.

Optuna's `study.get_trials()` builds every trial with its params, attributes and
intermediate values (17 s at 10k trials of 20 reports, bench/read_scaling.py), and its
per-process cache makes even a filtered read load the whole study first. On an RDB storage
these go to the database under the cache: a count per state is one query, the last N
trials 2N small ones. Journal and in-memory storages hold the study in memory anyway.
"""

from __future__ import annotations

from collections import Counter

import optuna

from .optuna_internals import study_id, study_storage, trial_state_counts, uncached_storage

STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def state_counts(study: optuna.Study) -> dict[str, int]:
    """{state: trials}, in `STATE_ORDER`, states with no trial left out."""
    counts = trial_state_counts(study_storage(study), study_id(study))
    if counts is None:
        counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {state: counts[state] for state in STATE_ORDER if counts.get(state)}


def recent_trials(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    """The study's last `n` trials by number (every trial when n is None or larger)."""
    backend = _rdb(study)
    if backend is None:
        return study.get_trials(deepcopy=False)[-n:]
    sid = study_id(study)
    total = sum(state_counts(study).values())
    return [backend.get_trial(backend.get_trial_id_from_study_id_trial_number(sid, number))
            for number in range(max(0, total - n), total)]


def running_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The RUNNING trials, read by state in the database (not after loading the study)."""
    backend = _rdb(study)
    running = (optuna.trial.TrialState.RUNNING,)
    if backend is None:
        return study.get_trials(deepcopy=False, states=running)
    return backend.get_all_trials(study_id(study), deepcopy=False, states=running)


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The RDB storage under Optuna's cache, or None for journal and in-memory storages."""
    backend = uncached_storage(study_storage(study))
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None
