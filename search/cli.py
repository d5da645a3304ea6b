"""The `tunetrack` command line.

Imports are lazy: `tunetrack --help`, `validate` and `status` never import torch or
mlflow, so they answer instantly. Errors a user can fix (`TunetrackError`) print one line
on stderr and exit with code 2; bugs keep their traceback.
"""

from __future__ import annotations

import datetime
import enum
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from tunetrack.models.errors import TunetrackError
from tunetrack.tracking.store import redact

if TYPE_CHECKING:
    from .config import StudySpec

app = typer.Typer(
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, pwsh)
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter search and experiment tracking for PyTorch image "
    "classifiers (Optuna + MLflow).",
)
F = TypeVar("F", bound=Callable[..., Any])

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        # Optuna's own CLI reads OPTUNA_STORAGE: honoured, after tunetrack's variable
        envvar=["TUNETRACK_STORAGE", "OPTUNA_STORAGE"],
        help="Optuna storage URL [default: sqlite:///tunetrack.db, or the journal file of "
        "run --workers for reading commands]",
    ),
]
TrackingOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI"),
]
FuseOpt = Annotated[int | None, typer.Option(
    min=1, help="train up to K trials at once as one model [default: the file's search.fuse]")]


class OutputFormat(str, enum.Enum):
    """`--format` of the reading commands (search/command_output.py renders each)."""

    table = "table"
    json = "json"
    csv = "csv"


FormatOpt = Annotated[
    OutputFormat,
    typer.Option("--format", "-f", case_sensitive=False,
                 help="table for people; json or csv for scripts"),
]
WideOpt = Annotated[bool, typer.Option(
    "--wide", help="every column in full, however wide [default: fit the terminal]")]
ProgressOpt = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress",
                 help="progress bars [default: on when a terminal watches]"),
]
LOG_LEVEL_ENV = "TUNETRACK_LOG_LEVEL"  # -v / -q, inherited by worker processes


def _version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import version

    libraries = ", ".join(f"{name} {version(name)}" for name in ("optuna", "mlflow", "torch"))
    typer.echo(f"tunetrack {version('tunetrack')} ({libraries})")
    raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print the versions and exit")
    ] = False,
    verbose: Annotated[int, typer.Option(
        "--verbose", "-v", count=True,
        help="-v: tunetrack's info messages; -vv: debug, and Optuna's and MLflow's info")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="errors only")] = False,
) -> None:
    """Hyperparameter search and experiment tracking for PyTorch image classifiers
    (Optuna + MLflow)."""
    _configure_logging(verbose, quiet)


class _StderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at the time (as logging's last resort does), so
    redirected or captured stderr gets the messages too."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(redact(self.format(record)) + "\n")
        except Exception:
            self.handleError(record)


def _configure_logging(verbose: int, quiet: bool) -> None:
    """tunetrack's loggers at WARNING (plain messages, as before), INFO with -v, DEBUG with
    -vv, ERROR with -q. Without -v/-q the level comes from TUNETRACK_LOG_LEVEL, which is
    set here for the worker processes `run --workers` starts."""
    if quiet:
        level = "ERROR"
    elif verbose:
        level = "INFO" if verbose == 1 else "DEBUG"
    else:
        level = os.environ.get(LOG_LEVEL_ENV, "WARNING").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise typer.BadParameter(f"{LOG_LEVEL_ENV} must be DEBUG, INFO, WARNING or ERROR "
                                     f"but got {level!r}")
    os.environ[LOG_LEVEL_ENV] = level
    # MLflow sets its own logger to INFO when it is imported, here and in the tracking
    # helper process ("Creating initial MLflow database tables..."), unless told otherwise
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(_library_level()))
    logger = logging.getLogger("tunetrack")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    fmt = "%(message)s" if level in ("WARNING", "ERROR", "CRITICAL") else (
        "%(levelname)s %(name)s: %(message)s")
    for handler in logger.handlers:
        if isinstance(handler, _StderrHandler):
            handler.setFormatter(logging.Formatter(fmt))


def _emit(rendered: Any, *, wide: bool = False) -> None:
    """A rich renderable to the console (`wide`: as wide as it is, for a pager or a file);
    JSON / CSV text verbatim (no wrapping, no markup)."""
    if isinstance(rendered, str):
        typer.echo(rendered, nl=not rendered.endswith("\n"))
    else:
        _console(wide=wide).print(rendered)


def _fit_width(wide: bool) -> int | None:
    """The width tables must fit: the terminal's (COLUMNS where set, 80 when not a
    terminal); None with --wide."""
    return None if wide else _console().width


def user_errors(fn: F) -> F:
    """Turn `TunetrackError` and a full disk into one line on stderr and exit code 2, and
    Ctrl-C (SIGTERM) into one line and exit code 130 (143) (the running trial was already
    marked FAIL on its way out; search/termination.py)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .termination import exit_code, interruption

        try:
            return fn(*args, **kwargs)
        except TunetrackError as exc:
            typer.echo(f"error: {redact(str(exc))}", err=True)  # whatever text it quotes
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            _say_interrupted(exc)
            raise typer.Exit(exit_code(exc)) from None
        except Exception as exc:
            # e.g. a database call cut off by Ctrl-C; a trial left RUNNING that way is
            # failed by the next command. A full disk: one line. Else a bug, traceback.
            interrupt = interruption(exc)
            if interrupt is None:
                _say_disk_full(exc)
                raise
            _say_interrupted(interrupt)
            raise typer.Exit(exit_code(interrupt)) from None

    return wrapper  # type: ignore[return-value]


def _say_disk_full(exc: Exception) -> None:
    """One line and exit 2 when `exc` says a disk is full (where `runner.run_study` could
    not name the store itself: another command, a store being created)."""
    from tunetrack.tracking.runs import disk_full_line, full_path

    full = full_path(exc, None)
    if full is not None:
        typer.echo(f"error: {disk_full_line('disk', full)}", err=True)
        raise typer.Exit(2) from None


def _say_interrupted(exc: KeyboardInterrupt) -> None:
    """One line; none from the workers of `run --workers N`, whose launcher prints the one
    summary line (with their exit codes) instead of N copies."""
    from .shared_study import WORKER_INDEX_ENV
    from .termination import one_line

    if WORKER_INDEX_ENV not in os.environ:
        typer.echo(one_line(exc), err=True)


def _console(*, wide: bool = False):
    from rich.console import Console

    return Console(width=100_000) if wide else Console()


def _quiet_libraries() -> None:
    """MLflow at WARNING (ERROR with -q, INFO with -vv): its per-trial info lines would
    drown tunetrack's own output; Optuna's warnings only with -vv (`optuna_warnings`)."""
    from .optuna_internals import optimize_logger
    from .optuna_warnings import optuna_log_level

    optuna_log_level(_library_level())
    logging.getLogger("mlflow").setLevel(_library_level())
    optimize_logger().addFilter(_SaidInOneLine())


def _library_level() -> int:
    level = logging.getLevelName(os.environ.get(LOG_LEVEL_ENV, "WARNING"))
    return logging.INFO if level == logging.DEBUG else max(level, logging.WARNING)


class _SaidInOneLine:
    """Drop Optuna's two "trial failed" warnings (one with a traceback) for what stops a
    study with one line of its own (`user_errors`): Ctrl-C or SIGTERM (the trial keeps its
    reason, `interrupted (SIGINT)`) and a full disk (`runner.run_study`)."""

    def __init__(self) -> None:
        self.follow_up: str | None = None

    def filter(self, record) -> bool:
        if record.exc_info and _said_in_one_line(record.exc_info[1]):
            self.follow_up = record.getMessage().split(" failed with ", 1)[0] + " failed with value"
            return False
        if self.follow_up and record.getMessage().startswith(self.follow_up):
            self.follow_up = None
            return False
        return True


def _said_in_one_line(exc: BaseException | None) -> bool:
    from tunetrack.tracking.runs import full_path

    return isinstance(exc, KeyboardInterrupt) or (
        exc is not None and full_path(exc, None) is not None)


def _load_study(name: str, storage: str | None, tracking_uri: str | None = None):
    """The existing study, read as it is: no store is created and nothing is written
    (`repair` cleans up after dead processes). Without --storage, the store `run` or
    `run --workers` left here (`storage.read_storage`)."""
    from .shared_study import load_study

    return load_study(name, _read_storage(storage, name), tracking_uri=tracking_uri)


def _read_storage(storage: str | None, study: str | None) -> str | None:
    """--storage as given; without it the default SQLite file, or the journal file that
    `run --workers` uses when that holds the study instead (said in one line on stderr)."""
    if storage is not None:
        return storage
    from .storage import read_storage

    found, note = read_storage(study)
    if note:
        typer.echo(note, err=True)
    return found


def _deprecated(old: str, new: str, old_value: Any, value: Any) -> Any:
    """An option's old spelling still works, once per use saying the new one (one meaning
    per option name across the commands)."""
    if old_value is None:
        return value
    typer.echo(f"warning: {old} is deprecated; use {new}", err=True)
    return old_value


def _check_tracking_store(tracking_uri: str | None, *, must_exist: bool = False) -> None:
    """Refuse a tracking store of the wrong kind or half created; with `must_exist`, one
    that is not there (reading must not create it)."""
    from tunetrack.tracking.store import check_mlflow_store, resolve_tracking_uri

    check_mlflow_store(resolve_tracking_uri(tracking_uri), must_exist=must_exist)


@app.command()
@user_errors
def validate(file: Annotated[Path, typer.Argument(help="study file (YAML)")],
             fmt: FormatOpt = OutputFormat.table) -> None:
    """Check a study file and print its resolved search space (or every error found, one
    line each on stderr, exit 2). A user dataset is called once (a dry build) and what it
    returns checked. With -f json: {"study": [...], "parameters": [...]}."""
    from .command_output import render_sections
    from .fused_groups import fuse_notes
    from .space import SearchSpace
    from .study_file import StudyFileError, load_study_file
    from .user_objects import dry_build

    try:
        spec = load_study_file(file)
        problems = dry_build(spec)
    except StudyFileError as exc:
        problems = exc.errors
    if problems:
        for line in problems:
            typer.echo(f"{file}: {line}", err=True)
        raise typer.Exit(2) from None
    space, search = SearchSpace(spec), spec.search
    study = {"name": spec.name, "searched": len(space.dimensions),
             "objectives": ", ".join(f"{o.resolved_direction} {o.metric}"
                                     for o in search.objective_list),
             "sampler": search.sampler, "pruner": search.pruner.type,
             "n_trials": search.n_trials,
             "notes": fuse_notes(spec, space.options("model.family"))}
    parameters = [{"parameter": p, "space": d, "only_when": w} for p, d, w in space.rows()]

    def table(_: dict[str, list[dict[str, Any]]]) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        shown = Table(title=f"{spec.name}: {study['searched']} searched parameters")
        for column in ("parameter", "space", "only when"):
            shown.add_column(column)
        for row in parameters:
            shown.add_row(*(Text(str(v)) for v in row.values()))
        return Group(shown, Text(f"{study['objectives']}; sampler {search.sampler}, pruner "
                                 f"{search.pruner.type}, {search.n_trials} trials"),
                     *(Text(f"note: {note}") for note in study["notes"]))

    _emit(render_sections({"study": [study], "parameters": parameters}, fmt.value, table))


@app.command()
@user_errors
def run(
    file: Annotated[Path, typer.Argument(help="study file (YAML)")],
    trials: Annotated[
        int | None, typer.Option("--trials", "-n", help="trials to add [default: the file's]")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = None,
    data: Annotated[str | None, typer.Option(help="override dataset.path")] = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="skip MLflow")] = False,
    progress: ProgressOpt = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="torch threads on CPU [default: 1, or OMP_NUM_THREADS]")] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="local worker processes sharing the study")
    ] = 1,
    gpus: Annotated[
        str | None, typer.Option(help="GPU ids for the workers, one each: 0,1 (default: all)")
    ] = None,
    fuse: FuseOpt = None,
) -> None:
    """Create or resume the study in FILE and run its trials (in N processes: --workers)."""
    from .runner import check_budget

    check_budget(trials, timeout)
    spec = _study_to_train(file, fuse=fuse, data=data, no_tracking=no_tracking)
    if spec.tracking.enabled and workers == 1:
        from tunetrack.tracking.runs import start_helper

        start_helper(tracking_uri)  # it imports MLflow while this process imports the rest
    _quiet_libraries()
    if workers > 1:
        from .workers import run_workers

        raise typer.Exit(run_workers(file, spec, workers=workers, gpus=gpus, storage=storage,
                                     tracking_uri=tracking_uri, device=device, trials=trials,
                                     timeout=timeout, data=data, progress=progress))
    from .progress import StudyProgress
    from .runner import run_study

    total = trials or spec.search.n_trials
    started = datetime.datetime.now()  # naive local time, as Optuna's trial times
    study = run_study(spec, n_trials=total, timeout=timeout, storage=storage,
                      tracking_uri=tracking_uri, device=device, threads=threads,
                      progress=StudyProgress(spec.name, total, enabled=progress))
    _print_summary(study, spec, tracking_uri, storage, since=started)


def _study_to_train(file: Path, *, fuse: int | None, data: str | None,
                    no_tracking: bool) -> StudySpec:
    """The study file with the overrides `run` and `worker` share (`--fuse` checked as the
    file's value would be)."""
    from .study_file import load_study_file

    spec = load_study_file(file)
    if fuse is not None:
        from .fused_groups import override_fuse

        override_fuse(spec, fuse)
    if data is not None:
        spec.dataset.path = data
    if no_tracking:
        spec.tracking.enabled = False
    return spec


def _print_summary(study, spec, tracking_uri: str | None, storage: str | None, *,
                   since: datetime.datetime) -> None:
    """The study's outcome (and who else added trials to it since `since`), then the next
    commands as a fresh shell runs them (`next_steps`: venv paths, the stores' options,
    the MLflow UI link)."""
    from rich.markup import escape

    from .command_output import study_summary
    from .concurrent_runs import shared_study_line
    from .next_steps import next_steps

    console = _console()
    console.print(study_summary(study))
    shared = shared_study_line(study, since)
    if shared is not None:
        console.print(escape(shared), soft_wrap=True)
    experiment = (spec.tracking.experiment or spec.name) if spec.tracking.enabled else None
    if experiment is not None:
        console.print(f"MLflow: experiment [bold]{escape(experiment)}[/]")
    for line in next_steps(spec.name, experiment, storage=storage, tracking_uri=tracking_uri):
        console.print(escape(line), soft_wrap=True)


@app.command()
def schema() -> None:
    """The study file's JSON Schema, for editors: `tunetrack schema > study.schema.json`,
    then `# yaml-language-server: $schema=study.schema.json` as a study file's first line."""
    import json

    from .config import study_json_schema

    print(json.dumps(study_json_schema(), indent=2, sort_keys=True))


@app.command()
@user_errors
def status(
    study: Annotated[str, typer.Argument(help="study name")], storage: StorageOpt = None,
    fmt: FormatOpt = OutputFormat.table, wide: WideOpt = False,
    last: Annotated[int, typer.Option(
        "--last", min=1, help="show the last N trials (the counts by state cover all)")] = 20,
    every: Annotated[bool, typer.Option("--all", help="show every trial")] = False,
) -> None:
    """The study's latest trials, one line each: state, value, test accuracy, epochs run,
    duration, params; and how many trials it has in each state."""
    from .command_output import render, trial_records, trials_table
    from .stale_trials import dead_trials
    from .trial_reads import recent_trials, state_counts

    loaded = _load_study(study, storage)
    dead = frozenset(t.number for t in dead_trials(loaded))
    counts = state_counts(loaded)
    total = sum(counts.values())
    trials = loaded.get_trials(deepcopy=False) if every else recent_trials(loaded, last)
    records = trial_records(loaded, trials, dead=dead)
    width = _fit_width(wide)

    def table(rows: list[dict[str, Any]]) -> Any:
        from rich.console import Group
        from rich.text import Text

        summary = f"{total} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        if len(rows) < total:
            summary += f"; the last {len(rows)} shown (--all shows every one)"
        note = (f"{len(dead)} RUNNING trial(s) of a process that is gone: "
                f"`tunetrack repair {study}` fails and retries them")
        return Group(trials_table(rows, f"study {study}", width), Text(summary),
                     *([Text(note)] if dead else []))

    _emit(render(records, fmt.value, table), wide=wide)


@app.command()
@user_errors
def best(
    study: Annotated[str, typer.Argument(help="study name")], storage: StorageOpt = None,
    fmt: FormatOpt = OutputFormat.table, wide: WideOpt = False,
) -> None:
    """Best value and parameters (the Pareto front for multi-objective studies)."""
    from .command_output import best_records, best_table, render

    records = best_records(_load_study(study, storage))
    width = _fit_width(wide)
    _emit(render(records, fmt.value, lambda r: best_table(r, f"best of study {study}", width)),
          wide=wide)


@app.command()
@user_errors
def studies(storage: StorageOpt = None, fmt: FormatOpt = OutputFormat.table,
            wide: WideOpt = False) -> None:
    """List the studies in the storage."""
    from .command_output import render, studies_table, study_records
    from .storage import open_storage

    width = _fit_width(wide)
    _emit(render(study_records(open_storage(_read_storage(storage, None), create=False)), fmt.value,
                 lambda r: studies_table(r, width)), wide=wide)


@app.command()
@user_errors
def repair(
    study: Annotated[str, typer.Argument(help="study name")], storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None, fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Fail and queue again the trials whose process died, ending their MLflow runs.

    Their runs end FAILED, the study's parent run KILLED when nothing runs any more. `run`
    and `worker` do this when they start; the reading commands never write."""
    from .command_output import render_one
    from .shared_study import repair_study

    _quiet_libraries()
    numbers = repair_study(study, _read_storage(storage, study), tracking_uri=tracking_uri)
    text = (f"study {study}: failed and queued again {len(numbers)} trial(s) whose process "
            f"died: {', '.join(f'#{n}' for n in numbers)}\n" if numbers
            else f"study {study}: no trial of a dead process; nothing to repair\n")
    _emit(render_one({"study": study, "failed_and_retried": numbers}, fmt.value,
                     lambda: text))


@app.command()
@user_errors
def worker(
    file: Annotated[Path, typer.Argument(help="study file (YAML)")],
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N | mps")] = None,
    trials_total: Annotated[int | None, typer.Option(
        "--trials-total",
        help="finished trials the study needs, all workers together (default: the file's)")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="torch threads on CPU [default: 1, or OMP_NUM_THREADS]")] = None,
    heartbeat_interval: Annotated[int, typer.Option(
        min=1, help="seconds between heartbeats (RDB storages)")] = 10,
    grace_period: Annotated[int, typer.Option(
        min=2, help="seconds without a heartbeat before a trial is dead and retried")] = 60,
    max_retry: Annotated[int, typer.Option(min=0, help="retries of a dead worker's trial")] = 2,
    data: Annotated[str | None, typer.Option(help="override dataset.path")] = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="skip MLflow")] = False,
    progress: ProgressOpt = None,
    fuse: FuseOpt = None,
) -> None:
    """Join (or create) the study in FILE; run trials until it has enough, all workers
    together. Start as many as you like, on any host that reaches the storage."""
    from .runner import check_budget
    from .stale_trials import Heartbeat

    check_budget(trials_total, timeout, trials_flag="--trials-total")
    spec = _study_to_train(file, fuse=fuse, data=data, no_tracking=no_tracking)
    heartbeat = Heartbeat(heartbeat_interval, grace_period, max_retry)
    _quiet_libraries()
    from .command_output import study_summary
    from .runner import run_study
    from .shared_study import run_worker

    study = run_worker(spec, run_study, storage=storage, total=trials_total,
                       tracking_uri=tracking_uri, device=device, timeout=timeout,
                       heartbeat=heartbeat, threads=threads, progress=progress)
    if study is not None:
        typer.echo(study_summary(study))


@app.command()
@user_errors
def compare(
    study: Annotated[str, typer.Argument(help="study name")],
    top: Annotated[int, typer.Option(min=1, help="how many trials")] = 10,
    out: Annotated[Path | None, typer.Option(
        help="also write the top trials to this CSV file (as predict --out)")] = None,
    csv: Annotated[Path | None, typer.Option(
        hidden=True, help="deprecated spelling of --out")] = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    wide: WideOpt = False,
) -> None:
    """Top trials side by side: value, full run id, test accuracy, epochs, duration, cost,
    params; then the device seconds spent to reach 90/95/99 % of the best. With -f json:
    {"trials": [...], "cost_to_target": [...]}; with -f csv, a `section` column."""
    from rich.console import Group

    from tunetrack.tracking import compare_trials
    from tunetrack.tracking.reading import COST_KEY, cost_to_target

    from .command_output import cost_table, render_sections, rows_table
    from .trial_reads import trial_summaries, whole

    loaded = _load_study(study, storage, tracking_uri)
    _check_tracking_store(tracking_uri)
    # ranked and costed from summaries; only the top trials are read whole
    summaries = trial_summaries(loaded, [COST_KEY])
    frame = compare_trials(loaded, tracking_uri=tracking_uri, top=top, trials=summaries,
                           whole=lambda picked: whole(loaded, picked))
    out = _deprecated("compare --csv", "--out", csv, out)
    if out is not None:
        frame.to_csv(out, index=False)
    sections = {"trials": frame.to_dict("records"),
                "cost_to_target": cost_to_target(loaded, trials=summaries).to_dict("records")}
    width = _fit_width(wide)

    def tables(parts: dict[str, list[dict[str, Any]]]) -> Group:
        shown = [rows_table(parts["trials"], f"top {len(parts['trials'])} trials of {study}",
                            width)]
        if parts["cost_to_target"]:
            shown.append(cost_table(parts["cost_to_target"], f"cost to target of {study} "
                                    f"(device seconds, finished trials in completion order)",
                                    width))
        return Group(*shown)

    _emit(render_sections(sections, fmt.value, tables), wide=wide)


# a bigger study's report draws this many of its trials (the best half, the rest spread)
REPORT_MAX_TRIALS = 500


@app.command()
@user_errors
def report(
    study: Annotated[str, typer.Argument(help="study name")],
    out: Annotated[Path, typer.Option(help="HTML file to write")] = Path("report.html"),
    top: Annotated[int, typer.Option(min=1, help="trials in the top-trials table")] = 10,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """One self-contained HTML report: summary, Optuna plots, top trials and the best
    trial's pictures from MLflow (opens offline; a study without completed trials still
    gets one)."""
    loaded = _load_study(study, storage, tracking_uri)
    _check_tracking_store(tracking_uri)
    _quiet_libraries()
    from tunetrack.tracking import write_report
    from tunetrack.tracking.directions import direction_sign
    from tunetrack.tracking.reading import rank_key

    from .trial_reads import bounded_view

    signs = [direction_sign(d) for d in loaded.directions]
    shown, note = bounded_view(loaded, REPORT_MAX_TRIALS, lambda t: rank_key(t, signs))
    summary = write_report(shown, out, tracking_uri=tracking_uri, top=top, note=note)
    best = ("no completed trial" if summary.best_trial is None else
            f"{len(summary.pictures)} pictures of trial {summary.best_trial}")
    record = {"path": str(summary.path.resolve()), "plots": len(summary.plots),
              "pictures": len(summary.pictures), "best_trial": summary.best_trial,
              "notes": list(summary.notes)}
    from .command_output import render_one

    # the path on a line of its own: whole (copyable) however narrow the terminal
    _emit(render_one(record, fmt.value, lambda: f"report: {record['path']}\n"
                 f"  {record['plots']} plots, {best}\n"))
    for note in summary.notes:
        typer.echo(f"note: {note}", err=True)


@app.command()
@user_errors
def promote(
    study: Annotated[str, typer.Argument(help="study name")],
    model_name: Annotated[str | None, typer.Option(
        help="registered model name [default: the study file's registry.model_name]")] = None,
    alias: Annotated[str | None, typer.Option(help="alias to move [default: champion]")] = None,
    min_improvement: Annotated[float | None, typer.Option(
        min=0, help="test-accuracy gain needed over the champion")] = None,
    alpha: Annotated[float | None, typer.Option(
        help="McNemar significance level the gain must reach [default: the file's, 0.05]")
    ] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="show the evidence and the decision; change nothing")] = False,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Register the best trial's model; move the alias only if it beats the champion by
    min_improvement with McNemar p < alpha (prints n, accuracies, CI, b/c, p)."""
    loaded = _load_study(study, storage, tracking_uri)
    _check_tracking_store(tracking_uri, must_exist=True)
    registry = loaded.user_attrs.get("spec", {}).get("registry") or {}
    model_name = model_name or registry.get("model_name")
    if not model_name:
        raise TunetrackError("--model-name is required (the study file has no registry section)")
    _quiet_libraries()
    from tunetrack.tracking import promote as promote_best
    from tunetrack.tracking.registry import DEFAULT_ALPHA, evidence_lines

    result = promote_best(loaded, model_name=model_name,
                          alias=alias or registry.get("alias", "champion"),
                          min_improvement=(min_improvement if min_improvement is not None
                                           else registry.get("min_improvement", 0.0)),
                          alpha=alpha if alpha is not None else registry.get("alpha",
                                                                             DEFAULT_ALPHA),
                          export=registry.get("export", ()),
                          dry_run=dry_run, tracking_uri=tracking_uri)
    from .command_output import promotion_record, render_one

    # the message already says what happened ("promoted trial #3 ...", "not promoted: ...")
    _emit(render_one(promotion_record(result), fmt.value,
                     lambda: "".join(f"{line}\n" for line in [*evidence_lines(result),
                                                             result.message])))


@app.command()
@user_errors
def history(
    model_name: Annotated[str, typer.Argument(help="registered model name")],
    alias: Annotated[str | None, typer.Option(help="only this alias [default: all]")] = None,
    tracking_uri: TrackingOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    wide: WideOpt = False,
) -> None:
    """Every promotion decision of a registered model, promoted or refused, with its
    evidence (n, accuracies, difference and CI, b/c, McNemar p)."""
    _check_tracking_store(tracking_uri, must_exist=True)
    _quiet_libraries()
    from rich.console import Group
    from rich.text import Text

    from tunetrack.tracking import promotion_history

    from .command_output import history_table, render

    entries = promotion_history(model_name, alias=alias, tracking_uri=tracking_uri)
    width = _fit_width(wide)

    def table(rows: list[dict[str, Any]]) -> Group:
        reasons = [Text(f"{e.get('at', '-')} {e['alias']} {e['decision']}: "
                        f"{e.get('reason', '')}") for e in rows]
        return Group(history_table(rows, f"promotion history of {model_name}", width),
                     *reasons)

    _emit(render(entries, fmt.value, table), wide=wide)


@app.command()
@user_errors
def reproduce(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a trial")],
    tolerance: Annotated[float, typer.Option(
        help="allowed accuracy difference when a bit-exact replay is not expected")] = 0.005,
    device: Annotated[str | None, typer.Option(
        help="cpu | cuda | cuda:N | mps [default: the recorded one when available]")] = None,
    log: Annotated[bool, typer.Option(help="log the reproduction as an MLflow run")] = True,
    tracking_uri: TrackingOpt = None,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Retrain a trial from its MLflow run alone and compare it with the record: bit-exact
    on CPU with the same versions, else within --tolerance. Exit 0 reproduced, 1 not,
    2 bad input."""
    _check_tracking_store(tracking_uri, must_exist=True)
    _quiet_libraries()
    from .reproduce import reproduce as reproduce_run

    result = reproduce_run(run_id, tracking_uri=tracking_uri, tolerance=tolerance,
                           device=device, log=log)
    from .command_output import render_one, reproduction_record

    _emit(render_one(reproduction_record(result), fmt.value,
                     lambda: "".join(f"{line}\n" for line in result.lines)))
    raise typer.Exit(0 if result.reproduced else 1)


@app.command()
@user_errors
def predict(
    model_uri: Annotated[str, typer.Argument(help="e.g. models:/digits-classifier@champion")],
    paths: Annotated[list[str], typer.Argument(help="image files and folders of images")],
    classes: Annotated[int, typer.Option(min=1, help="classes per image")] = 3,
    top: Annotated[int | None, typer.Option(
        min=1, hidden=True, help="deprecated spelling of --classes")] = None,
    out: Annotated[Path | None, typer.Option(
        help="also write the predictions to this CSV file (one row per image)")] = None,
    tracking_uri: TrackingOpt = None,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Classify images with a registered model (its own pyfunc, as `serve` answers): one
    line per image with its top classes and their probabilities."""
    # --top means trials in compare and report; here it meant classes
    classes = _deprecated("predict --top", "--classes", top, classes)
    if model_uri.startswith(("models:/", "runs:/")):
        _check_tracking_store(tracking_uri, must_exist=True)
    _quiet_libraries()
    from tunetrack.tracking import predict as predict_images

    from .command_output import prediction_lines, prediction_records, render, to_csv

    records = prediction_records(predict_images(model_uri, paths, top=classes,
                                                tracking_uri=tracking_uri))
    if out is not None:
        out.write_text(to_csv(records))
    _emit(render(records, fmt.value, prediction_lines))


@app.command()
@user_errors
def serve(
    model_uri: Annotated[str, typer.Argument(help="e.g. models:/digits-classifier@champion")],
    host: Annotated[str, typer.Option(help="interface to bind; keep 127.0.0.1")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port")] = 5002,
    workers: Annotated[int, typer.Option(
        min=1, help="server processes (each loads the model; torch threads = cores / workers)")
    ] = 1,
    max_body_mb: Annotated[float, typer.Option(
        min=0.001, help="larger requests get HTTP 400")] = 16.0,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Serve a model over HTTP (MLflow's scoring server, local environment): POST images or
    pixel arrays to /invocations, get label, probability and probabilities per image."""
    if model_uri.startswith(("models:/", "runs:/")):
        _check_tracking_store(tracking_uri, must_exist=True)
    _quiet_libraries()
    from tunetrack.tracking.serving import serve as serve_model

    serve_model(model_uri, host=host, port=port, workers=workers, max_body_mb=max_body_mb,
                tracking_uri=tracking_uri)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def server(
    ctx: typer.Context,
    backend_store_uri: Annotated[str, typer.Option(
        help="MLflow's database, e.g. postgresql+psycopg://USER@HOST/mlflow (password: "
             "PGPASSWORD)")],
    artifacts_destination: Annotated[str, typer.Option(
        help="folder (or s3://...) where the server keeps artifacts")],
    host: Annotated[str, typer.Option(help="interface to bind; keep 127.0.0.1")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 5000,
    server_workers: Annotated[int, typer.Option(
        "--server-workers", min=1, help="MLflow web worker processes")] = 2,
) -> None:
    """Start the MLflow tracking server workers log to (execs `mlflow server`; extra
    arguments after -- go to it)."""
    from tunetrack.tracking.store import mlflow_server_argv, serve

    argv = mlflow_server_argv(backend_store_uri=backend_store_uri,
                              artifacts_destination=artifacts_destination, host=host,
                              port=port, workers=server_workers, extra=ctx.args)
    serve(argv, backend_store_uri=backend_store_uri, host=host)


def main() -> None:
    """The `tunetrack` command. It leaves with `os._exit` once its work is written: tearing
    down torch (and torch._dynamo, where something imported it), Optuna and SQLAlchemy takes
    ~1 s on a 2-core machine and is the larger part of what a study waited for after its
    last trial."""
    from .startup_gc import pause
    from .termination import exit_code, raise_on_sigterm

    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if command in ("run", "worker"):
        pause()  # until the first trial's trainer is built (startup_gc.py)
        raise_on_sigterm()  # docker stop, Kubernetes: as Ctrl-C (termination.py)
    try:
        app(prog_name="tunetrack")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    uri = sys.modules.get("tunetrack.tracking.store.sqlite")
    if uri is not None:  # before the helper's last writes: an emptied -wal file is room
        uri.checkpoint_wal()  # tunetrack.db whole without its -wal file
    helper = sys.modules.get("tunetrack.tracking.runs.helper_link")
    if helper is not None:
        try:
            helper.HELPER.close()  # everything the tracking helper was given is written
        except KeyboardInterrupt as exc:  # a second Ctrl-C while the record is written
            if code not in (130, 143):  # one line
                _say_interrupted(exc)
            code = code if code in (130, 143) else exit_code(exc)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # python -m tunetrack.search.cli
    sys.exit(main())
