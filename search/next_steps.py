"""What `tunetrack run` prints last: the next commands, spelled so that they work as printed.

`make demo` runs tunetrack from `.venv/bin` without activating the venv, so a bare
`tunetrack` or `mlflow` in a fresh shell is "command not found". The commands are therefore
spelled with the path of this interpreter's scripts folder when it runs from a virtual
environment (relative to the current folder when inside it), and they carry `--storage` /
`--tracking-uri` when the study used stores other than the defaults, because a fresh shell
has neither the options nor the environment variables that chose them.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from tunetrack.tracking.store import (
    DEFAULT_DB_FILE,
    redact,
    resolve_tracking_uri,
    sqlite_uri,
    ui_hint,
)

from .storage import DEFAULT_STORAGE


def script(name: str) -> str:
    """`name` as a fresh shell runs it: `.venv/bin/name` (or its absolute path) when this
    interpreter is a virtual environment's that has it, else the bare name."""
    folder = Path(sys.executable).parent  # the venv's bin, not the resolved base python
    if sys.prefix == sys.base_prefix or not (folder / name).exists():
        return name
    try:
        return (folder / name).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(folder / name)


def _store_options(storage: str | None, tracking_uri: str | None, tracking: bool) -> str:
    """The options a fresh shell needs to find the same stores (passwords never shown)."""
    options = []
    if storage and storage != DEFAULT_STORAGE:
        options += ["--storage", redact(storage)]
    default_uri = sqlite_uri(Path.cwd() / DEFAULT_DB_FILE)
    if tracking and tracking_uri and resolve_tracking_uri(tracking_uri) != default_uri:
        options += ["--tracking-uri", redact(tracking_uri)]
    return "".join(" " + shlex.quote(option) for option in options)


def next_steps(study: str, experiment: str | None, *, storage: str | None,
               tracking_uri: str | None) -> list[str]:
    """The lines `run` ends with: status, report and promote of `study` (report and
    promote read MLflow, so only with tracking: `experiment` is None without it), then
    how to open the experiment's runs in the MLflow UI."""
    tunetrack = script("tunetrack")
    name = shlex.quote(study)
    if experiment is None:
        return _commented([(f"{tunetrack} status {name}"
                            f"{_store_options(storage, None, False)}",
                            "the last trials: state, value, epochs, params")])
    options = _store_options(storage, tracking_uri, True)  # report, promote read MLflow
    steps = [(f"{tunetrack} status {name}{_store_options(storage, None, False)}",
              "the last trials: state, value, params"),
             (f"{tunetrack} report {name}{options}", "report.html: plots, top trials"),
             (f"{tunetrack} promote {name}{options}",
              "register the best model, @champion if it is better")]
    hint = ui_hint(tracking_uri, experiment, mlflow=script("mlflow"), study=study)
    ui = ["MLflow UI, in Model training mode on the study's trial runs:"]
    if hint.command is not None:
        ui.append(f"  {hint.command}")
    return [*_commented(steps), *ui, f"  then open {hint.url}" if hint.command else
            f"  {hint.url}"]


def _commented(steps: list[tuple[str, str]]) -> list[str]:
    """"next:" and one indented line per command, its comment aligned after it."""
    width = max(len(command) for command, _ in steps)
    return ["next:", *(f"  {command.ljust(width)}  # {comment}" for command, comment in steps)]
