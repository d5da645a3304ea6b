"""Say when a `run` shared its study with other processes, and what each added.

Each `tunetrack run FILE --trials N` adds N trials to the study, as Optuna's
`study.optimize(n_trials=N)` does: two runs of one file started together (two terminals,
one folder, the default SQLite storage) give 2N trials in one study, drawn by two samplers
seeded differently (`first_trial_seed`). A shared budget is what `tunetrack worker` is for
(`--trials-total`). Nothing about the study would show a user that a second process took
part, so the run that saw other processes' trials while it ran says so in one line.

A trial's process is known from the owner every trial records (`stale_trials.OWNER_ATTR`).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import optuna

from .stale_trials import OWNER_ATTR, this_process

_SHOWN = 8  # trial numbers listed per process before "..."


def shared_study_line(study: optuna.Study, since: datetime.datetime) -> str | None:
    """One line when other processes ran trials of `study` while this process ran (from
    `since`, a naive local time as Optuna's trial times are); None when it ran alone."""
    me = _identity(this_process())
    mine: list[int] = []
    others: dict[tuple, list[int]] = {}
    for trial in study.get_trials(deepcopy=False):
        owner = trial.system_attrs.get(OWNER_ATTR)
        if not isinstance(owner, dict) or trial.datetime_start is None:
            continue
        if _identity(owner) == me:
            mine.append(trial.number)
        elif trial.datetime_complete is None or trial.datetime_complete >= since:
            others.setdefault(_identity(owner), []).append(trial.number)
    if not others:
        return None
    alongside = "; ".join(f"{_who(owner)} ran {_trials(numbers)}"
                          for owner, numbers in others.items())
    return (f"study {study.study_name} was shared: this run added {_trials(mine)} while "
            f"{alongside}; each run adds its own --trials")


def _identity(owner: dict) -> tuple:
    return owner.get("host"), owner.get("pidns"), owner.get("pid"), owner.get("start")


def _who(identity: tuple) -> str:
    host, _, pid, _ = identity
    here = host == this_process()["host"]
    return f"pid {pid}" if here else f"pid {pid} on {host}"


def _trials(numbers: Sequence[int]) -> str:
    """`3 trials (1, 3, 5)`, at most `_SHOWN` numbers."""
    shown = ", ".join(str(n) for n in numbers[:_SHOWN])
    more = ", ..." if len(numbers) > _SHOWN else ""
    noun = "trial" if len(numbers) == 1 else "trials"
    return f"{len(numbers)} {noun} ({shown}{more})" if numbers else "no trials"
