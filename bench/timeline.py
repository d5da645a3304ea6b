"""Where `tunetrack run` spends its start and tail: a timeline of the study process's steps.

Runs the CLI in this process with the steps on the path to the first epoch and after the
last trial wrapped (each patched right after its module is first imported, so nothing is
imported earlier than the CLI itself would), and the big imports timed where they happen.
Prints, per step: start and end (wall seconds since this script started), wall seconds,
and this process's CPU seconds (steadier than wall time on a loaded machine). The tracking
helper process is not in the table: only what the study process waits for is. A step
that no longer exists (renamed) is listed as not seen, not an error.
For the benchmark numbers use `bench.overhead`; this says which step to look at.
Run (in an empty folder: fresh stores):
  python -m bench.timeline run /path/to/studies/digits.yaml --trials 3 --no-progress
"""

from __future__ import annotations

import atexit
import functools
import importlib
import importlib.abc
import importlib.util
import os
import sys
import time

T0, C0 = time.perf_counter(), time.process_time()
EVENTS: list[tuple[float, float, float, str]] = []  # start, end, cpu seconds, label

STEPS = [  # module:attribute, label (first call only for the per-trial ones)
    ("tunetrack.search.study_file:load_study_file", "load_study_file"),
    ("tunetrack.search.runner:run_study", "run_study (everything)"),
    ("tunetrack.tracking.runs.study:start_helper", "start_helper (starts the helper)"),
    ("tunetrack.models.data:load_splits", "load_splits"),
    ("tunetrack.search.shared_study:open_study_storage", "open_study_storage (Optuna)"),
    ("tunetrack.search.runner:create_or_load", "create_or_load (study row)"),
    ("tunetrack.tracking.runs.study:StudyTracker.start_study", "tracker.start_study (queued)"),
    ("tunetrack.tracking.store.client:client_for", "client_for (MLflow client, store)"),
    ("tunetrack.search.objective:Objective.__call__", "trial"),
    ("tunetrack.models.train:build_optimizer", "build_optimizer"),
    ("tunetrack.models.train:Trainer._train_epoch", "train epoch"),
    ("tunetrack.tracking.runs.study:StudyTracker.finish_study", "tracker.finish_study"),
    ("tunetrack.tracking.pictures.study_plots:write_plots", "write_plots (study plots)"),
    ("tunetrack.search.cli:_print_summary", "_print_summary"),
]
FIRST_ONLY = {"build_optimizer", "train epoch", "client_for (MLflow client, store)"}
TIMED_IMPORTS = {
    "torch", "torch._dynamo", "torchvision", "optuna", "optuna.storages._rdb.storage",
    "optuna.visualization", "optuna.visualization.matplotlib", "mlflow", "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store", "mlflow.pytorch", "sklearn", "scipy",
    "pandas", "matplotlib", "matplotlib.pyplot", "plotly", "sqlalchemy", "alembic",
    "pydantic", "rich",
}
PENDING: dict[str, list[tuple[str, str]]] = {}
SEEN: set[str] = set()


def _now() -> tuple[float, float]:
    return time.perf_counter() - T0, time.process_time() - C0


def _patch(module, attr: str, label: str) -> None:
    owner = module
    *path, name = attr.split(".")
    try:
        for part in path:
            owner = getattr(owner, part)
        fn = getattr(owner, name)
    except AttributeError:
        return
    calls = [0]

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        calls[0] += 1
        if label in FIRST_ONLY and calls[0] > 1:
            return fn(*args, **kwargs)
        wall, cpu = _now()
        try:
            return fn(*args, **kwargs)
        finally:
            end, cpu_end = _now()
            EVENTS.append((wall, end, cpu_end - cpu,
                           label if calls[0] == 1 else f"{label} #{calls[0]}"))

    SEEN.add(label)
    setattr(owner, name, timed)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Times the listed imports and patches the steps' modules once they are executed."""

    def find_spec(self, name, path, target=None):
        if name not in PENDING and name not in TIMED_IMPORTS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            wall, cpu = _now()
            execute(module)
            if name in TIMED_IMPORTS:
                end, cpu_end = _now()
                EVENTS.append((wall, end, cpu_end - cpu, f"  import {name}"))
            for attr, label in PENDING.pop(name, []):
                _patch(module, attr, label)

        spec.loader.exec_module = exec_module
        return spec


def _report(returned: list[float]) -> None:
    trials = [e for e in EVENTS if e[3].startswith("trial")]
    rows = [e for e in EVENTS if not e[3].startswith("trial")]
    if trials:
        rows += [(*trials[0][:3], "first trial"),
                 (*trials[-1][:3], f"last trial (of {len(trials)})")]
    out = sys.stderr
    print(f"{'start':>7} {'end':>7} {'wall':>6} {'cpu':>6}  step", file=out)
    for start, end, cpu, label in sorted(rows):
        print(f"{start:7.2f} {end:7.2f} {end - start:6.2f} {cpu:6.2f}  {label}", file=out)
    wall, cpu = _now()
    if returned:
        print(f"{returned[0]:7.2f} the CLI returned", file=out)
    print(f"{wall:7.2f} exit handlers done (the helper drained); this process used "
          f"{cpu:.2f} s CPU; interpreter teardown follows", file=out)
    missing = [label for _, label in STEPS if label not in SEEN]
    if missing:
        print(f"not seen (renamed, or not run): {', '.join(missing)}", file=out)


def main() -> None:
    wall, cpu = _now()
    from tunetrack.search import cli

    end, cpu_end = _now()
    EVENTS.append((wall, end, cpu_end - cpu, "import tunetrack.search.cli"))
    for target, label in STEPS:
        module, attr = target.split(":")
        if module in sys.modules:
            _patch(sys.modules[module], attr, label)
        else:
            PENDING.setdefault(module, []).append((attr, label))
    sys.meta_path.insert(0, _AfterImport())
    returned: list[float] = []
    atexit.register(_report, returned)  # first registered: runs after the helper's drain
    leave = os._exit

    def report_then_leave(code: int) -> None:  # the CLI leaves with os._exit: no atexit
        returned.append(_now()[0])
        _report(returned[:1])
        leave(code)

    os._exit = report_then_leave
    sys.argv = ["tunetrack", *sys.argv[1:]]
    try:
        cli.main()
    finally:
        returned.append(_now()[0])


if __name__ == "__main__":
    main()
