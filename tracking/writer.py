"""Inside the helper process (`helper.py`): each message of the study process as MLflow
calls, through `MlflowClient` and explicit run ids only.

Two lanes, one thread each: quick writes (parent and trial runs, epoch metrics, ends) and
slow work (a completed trial's files and model, the study's plots). Messages of one run
stay in order: once a run has slow work, its later messages (its end) queue behind it.

Failures never reach the study: a failed write prints one warning per (message, error
type), skips the rest of that run's data (its end is still tried, so no run stays RUNNING
for a blip that passed) and marks the store down; while it is down, each new run first
probes the store with one quick request (and for a few seconds after a failure, new runs
do not even try), so a dead server costs the study nothing.

Parent run: **shared** by every worker process of a study, found by its tags
(`tunetrack.study`, `tunetrack.role=parent`), remembered in the study's user attribute
`mlflow_parent_run_id`. Find-or-create runs under a lock (a lock file for a local SQLite
store); workers of a remote store that still race each create a parent, look again (twice,
0.5 s apart), keep the earliest and delete their own duplicate.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrack.models import TunetrackError
from tunetrack.models.errors import first_line

from . import tags as T
from .uri import check_reachable, file_lock, sqlite_path

if TYPE_CHECKING:
    from .plot_drawer import PlotDrawer

_log = logging.getLogger(__name__)
MAX_METRICS, MAX_PARAMS = 1000, 100  # MLflow's log_batch limits
PARENT_SETTLE_S = 0.5  # remote stores: second look for a rival parent run after this
RETRY_AFTER_S = 5.0  # after a failure, new runs skip the store this long
_SLOW_OPS = ("completed", "finish_study")
_CONNECTION_HINTS = ("Max retries exceeded", "NewConnectionError", "Connection refused",
                     "Failed to establish a new connection")


def _client(uri: str):
    from .client import client_for

    return client_for(uri)


def tracking_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the tracking store failed", as opposed to a bug in our code."""
    import requests
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [MlflowException, requests.RequestException, OSError]
    with contextlib.suppress(ImportError):
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.DBAPIError)  # database-backed stores
    return tuple(errors)


def short_reason(exc: BaseException) -> str:
    """One short line: MLflow wraps a refused connection in a paragraph of urllib3 text."""
    text = str(getattr(exc, "message", None) or exc).strip()
    if any(hint in text for hint in _CONNECTION_HINTS):
        endpoint = text.split("API request to ", 1)[-1].split(" failed", 1)[0]
        return f"cannot connect ({endpoint})" if endpoint != text else "cannot connect"
    line = first_line(exc)
    return line if len(line) <= 200 else line[:197] + "..."


class _Skipped(Exception):
    """A write not even tried: the store failed moments ago (already warned about)."""


@dataclass
class _Study:
    uri: str
    name: str
    start: dict[str, Any]  # the start_study message, to try again after a failure
    experiment_id: str | None = None
    parent_run_id: str | None = None


@dataclass
class _Run:
    study: _Study
    number: int
    run_id: str | None = None
    artifact_uri: str = ""
    monitor: Any = None  # mlflow SystemMetricsMonitor
    broken: bool = False  # a write failed: skip the rest of this run's data


class Writer:
    """Carries out the study process's messages; `answer(seq, result)` reports each."""

    def __init__(self, answer: Callable[[int, Any], None]):
        self._answer = answer
        self._studies: dict[str, _Study] = {}
        self._runs: dict[int, _Run] = {}
        self._slow_runs: set[int] = set()
        self._down: dict[str, float] = {}  # store -> when its last write failed
        self._warned: set[tuple[str, str]] = set()
        self._errors: tuple[type[BaseException], ...] | None = None
        self._lanes = [queue.Queue(), queue.Queue()]
        for lane, name in zip(self._lanes, ("quick", "slow"), strict=True):
            threading.Thread(target=self._work, args=(lane,), daemon=True,
                             name=f"tunetrack-{name}").start()
        # the slow lane imports torch and matplotlib once the quick lane has MLflow and
        # the store (the first runs are what the first trials wait for)
        self._quick_ready = threading.Event()
        self._drawer: PlotDrawer | None = None  # started at the end of warm_up
        self._dispatched = 0
        self._lanes[0].put((None, "open_store", {}))
        self._lanes[1].put((None, "warm_up", {}))

    # ---- lanes ----------------------------------------------------------------------------

    def dispatch(self, seq: int, op: str, kwargs: dict[str, Any]) -> None:
        self._dispatched += 1
        run = kwargs.get("run")
        slow = op in _SLOW_OPS or run in self._slow_runs
        if op in _SLOW_OPS:  # after every quick write queued before it (the run's creation,
            caught_up = threading.Event()  # the ends of other runs)
            self._lanes[0].put((None, "signal", {"event": caught_up}))
            self._lanes[1].put((None, "wait", {"event": caught_up}))
        if op == "completed":
            self._slow_runs.add(run)
        if op == "finish_study":
            kwargs["drawing"] = self._draw_early(kwargs)
        self._lanes[slow].put((seq, op, kwargs))

    def _draw_early(self, finish: dict[str, Any]) -> bool:
        """Hand the study's dearest PNGs to the drawer process as soon as `finish_study`
        arrives, while the slow lane still writes the last trial's files; True if it took
        them (`finish_study` then only collects them)."""
        state = self._studies.get(finish["study"])
        if self._drawer is None or state is None or state.parent_run_id is None:
            return False
        from .plot_drawer import ASIDE

        return self._drawer.submit(list(ASIDE), finish["trials"], finish["directions"])

    def close(self) -> None:
        """Return once every message is carried out (imports still running for nothing
        are not waited for)."""
        self._quick_ready.set()
        if self._dispatched:
            for lane in self._lanes:
                lane.join()
        if self._drawer is not None:
            self._drawer.close()

    def _work(self, lane: queue.Queue) -> None:
        trim = _malloc_trim()
        while True:
            seq, op, kwargs = lane.get()
            try:
                result = getattr(self, op)(**kwargs)
            except Exception as exc:
                self._failed(op, exc, kwargs)
                result = None
            if op in ("start_study", "create_run"):
                self._quick_ready.set()  # failed or not: the slow lane may start
            if seq is not None:
                self._answer(seq, result)
            del kwargs  # a completed trial's model and arrays go now
            if op in _SLOW_OPS:
                trim(0)
            lane.task_done()

    def _failed(self, op: str, exc: BaseException, kwargs: dict[str, Any]) -> None:
        """One warning per (message, error type); the run's other data is skipped."""
        run = self._runs.get(kwargs.get("run", -1))
        if run is not None:
            run.broken = True
        if isinstance(exc, _Skipped):
            return
        if self._errors is None:
            self._errors = tracking_errors()
        store = isinstance(exc, (*self._errors, TunetrackError))
        if store:
            study = run.study if run else self._studies.get(kwargs.get("study", ""))
            if study is not None:
                self._down[study.uri] = time.monotonic()
        kind = (op, type(exc).__name__)
        where = f"{op} (trial {run.number})" if run is not None else op
        if kind in self._warned:
            _log.debug("MLflow %s failed again: %s", where, short_reason(exc))
            return
        self._warned.add(kind)
        if not store:
            _log.warning("MLflow logging failed in %s", where, exc_info=exc)
            return
        goes_on = "this trial goes on without tracking" if run else "the study goes on"
        _log.warning("warning: MLflow tracking failed in %s: %s: %s; %s (Optuna still "
                     "records every trial)", where, type(exc).__name__, short_reason(exc),
                     goes_on)

    def _answering(self, uri: str, *, new_run: bool = False) -> None:
        """After a failure, one quick probe (no MLflow retries) before writing again; a
        new run is not even tried for RETRY_AFTER_S (a store that answers the probe but
        fails the writes would cost the helper seconds per trial)."""
        failed_at = self._down.get(uri)
        if failed_at is None:
            return
        if new_run and time.monotonic() - failed_at < RETRY_AFTER_S:
            raise _Skipped(uri)
        check_reachable(uri)  # raises TunetrackError while the store is down
        del self._down[uri]

    # ---- messages ---------------------------------------------------------------------------

    def open_store(self) -> None:
        """Import MLflow's client before anything else (the first message is often a
        start_study, then the first trial's run)."""
        from . import client  # noqa: F401

    def warm_up(self) -> None:
        """Import what the slow lane needs, and draw a made-up trial's files once, while
        the first trials train (`record.warm_up_files`)."""
        self._quick_ready.wait(timeout=60)
        import optuna.visualization.matplotlib  # noqa: F401  (the study's plots)
        import torch

        from . import model_io  # noqa: F401
        from .record import warm_up_files

        torch.set_num_threads(1)
        # a few images per model only (feature maps, the signature): oneDNN would keep
        # ~1 MB of kernels per distinct layer shape for good
        torch.backends.mkldnn.enabled = False
        with tempfile.TemporaryDirectory(prefix="tunetrack-warm-up-") as tmp:
            warm_up_files(Path(tmp))
        from .plot_drawer import PlotDrawer

        self._drawer = PlotDrawer.start()  # after this process's own start-up work
        gc.freeze()  # what is imported stays: the collector need not walk it again
        gc.enable()  # the helper starts with it off (helper.serve)

    def signal(self, event: threading.Event) -> None:
        event.set()

    def wait(self, event: threading.Event) -> None:
        event.wait()

    def start_study(self, study: str, uri: str, experiment: str, study_name: str,
                    directions: str, remembered: str | None) -> str:
        """Create a new local store (`uri.ensure_local_store`: here, off the study's path
        to its first epoch), get or create the experiment and the study's one parent run;
        return its id."""
        from .client import get_or_create_experiment
        from .uri import ensure_local_store

        state = self._studies.setdefault(study, _Study(uri, study_name, dict(
            study=study, uri=uri, experiment=experiment, study_name=study_name,
            directions=directions, remembered=remembered)))
        ensure_local_store(uri)
        client = _client(uri)
        state.experiment_id = get_or_create_experiment(client, experiment, uri)
        parent = self._usable_parent(state, remembered) if remembered else None
        if parent is None:
            with _parent_lock(uri, experiment, study_name):
                found = self._find_parents(state)
                parent = found[0] if found else self._create_parent(state, directions)
        if client.get_run(parent).info.status != "RUNNING":
            client.update_run(parent, status="RUNNING")  # a resumed study is live again
        state.parent_run_id = parent
        return parent

    def _usable_parent(self, state: _Study, run_id: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            run = _client(state.uri).get_run(run_id)
        except MlflowException:
            return None  # e.g. the study outlived its mlflow.db
        ok = (run.info.experiment_id == state.experiment_id
              and run.info.lifecycle_stage == "active"
              and run.data.tags.get(T.STUDY) == state.name
              and run.data.tags.get(T.ROLE) == T.ROLE_PARENT)
        return run_id if ok else None

    def _find_parents(self, state: _Study) -> list[str]:
        """Active parent runs of this study, earliest first (the study tag is compared here,
        not in the filter, so any study name works without quoting rules)."""
        runs = _client(state.uri).search_runs(
            [state.experiment_id], filter_string=f"tags.`{T.ROLE}` = '{T.ROLE_PARENT}'",
            max_results=1000)
        mine = [r for r in runs if r.data.tags.get(T.STUDY) == state.name]
        mine.sort(key=lambda r: (r.info.start_time, r.info.run_id))
        return [r.info.run_id for r in mine]

    def _create_parent(self, state: _Study, directions: str) -> str:
        client = _client(state.uri)
        mine = client.create_run(state.experiment_id, run_name=state.name, tags={
            T.STUDY: state.name, T.ROLE: T.ROLE_PARENT, T.OPTUNA_STUDY: state.name,
            T.OPTUNA_DIRECTIONS: directions, **T.runtime_tags()}).info.run_id
        keep = mine
        # workers on other hosts may have raced past the lock: all keep the earliest; a
        # second look after a pause catches a rival whose insert committed late
        for pause in (0.0,) if sqlite_path(state.uri) else (0.0, PARENT_SETTLE_S):
            time.sleep(pause)
            found = self._find_parents(state)
            keep = found[0] if found else mine
            if keep != mine:
                client.delete_run(mine)
                break
        return keep

    def create_run(self, run: int, study: str, number: int, params: dict[str, str],
                   tags: dict[str, str], trial_yaml: str, system_metrics_s: float | None,
                   data: Any = None) -> str:
        """The trial's child run with its params, `trial.yaml` and, given `data` (the
        trial's `DataConfig`), its splits as dataset inputs (`datasets.py`); returns the
        run id."""
        from mlflow.entities import Param

        from .datasets import dataset_inputs

        state = self._studies[study]
        me = self._runs[run] = _Run(state, number, broken=True)  # until written
        self._answering(state.uri, new_run=True)
        if state.parent_run_id is None:  # creating it had failed: try again
            self.start_study(**state.start)
        client = _client(state.uri)
        info = client.create_run(state.experiment_id, run_name=f"trial-{number}", tags={
            T.PARENT_RUN_ID: state.parent_run_id, **tags}).info
        me.run_id, me.artifact_uri = info.run_id, info.artifact_uri
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS):
            client.log_batch(me.run_id, params=items[start:start + MAX_PARAMS],
                             synchronous=True)
        if data is not None:
            client.log_inputs(me.run_id, datasets=dataset_inputs(
                data, tags.get(T.DATA_FINGERPRINT, "")))
        with tempfile.TemporaryDirectory(prefix="tunetrack-trial-") as tmp:
            (Path(tmp) / "trial.yaml").write_text(trial_yaml)
            self._upload(me, Path(tmp))
        if system_metrics_s:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            me.monitor = SystemMetricsMonitor(me.run_id, sampling_interval=system_metrics_s,
                                              tracking_uri=state.uri)
            me.monitor.start()
        me.broken = False
        return me.run_id

    def _live(self, run: int) -> _Run | None:
        me = self._runs.get(run)
        return None if me is None or me.broken else me

    def _upload(self, run: _Run, folder: Path) -> None:
        """A folder's files straight to the run's artifact repository, in one call
        (`MlflowClient.log_artifacts` would re-read the whole run first)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        get_artifact_repository(run.artifact_uri, tracking_uri=run.study.uri).log_artifacts(
            str(folder))

    def metrics(self, run: int, rows: list[tuple[str, float, int, int]],
                tags: dict[str, str] | None = None, model_id: str | None = None) -> None:
        """One `log_batch` of (key, value, timestamp ms, step) rows (and tags)."""
        from mlflow.entities import Metric, RunTag

        me = self._live(run)
        if me is None:
            return
        metrics = [Metric(k, float(v), stamp, step, model_id=model_id)
                   for k, v, stamp, step in rows]
        run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        for start in range(0, max(len(metrics), 1), MAX_METRICS):
            _client(me.study.uri).log_batch(
                me.run_id, metrics=metrics[start:start + MAX_METRICS],
                tags=run_tags if start == 0 else [], synchronous=True)

    def completed(self, run: int, record: Any) -> None:
        """A completed trial's files, its final metrics and, when `record.log_model`, its
        model (`record` is a `record.CompletedTrial`)."""
        from .record import write_trial_artifacts

        me = self._live(run)
        if me is None:
            return
        with tempfile.TemporaryDirectory(prefix="tunetrack-trial-") as tmp:
            write_trial_artifacts(Path(tmp), record)
            self._upload(me, Path(tmp))
        tags, model_id = {T.STOP_REASON: record.stop_reason}, None
        if record.log_model:
            from .model_io import FORMAT_TAG, log_pytorch_model

            model_id, fmt = log_pytorch_model(
                _client(me.study.uri), run_id=me.run_id,
                experiment_id=me.study.experiment_id, model=record.model,
                example=record.images, metadata={
                    "classes": list(record.classes), "input_shape": list(record.input_shape),
                    "data_fingerprint": record.data_fingerprint, "study": me.study.name,
                    "trial": me.number, "run_id": me.run_id},
                tags={T.STUDY: me.study.name, T.TRIAL: str(me.number)})
            tags.update({T.MODEL_ID: model_id, FORMAT_TAG: fmt})
        stamp = int(time.time() * 1000)  # final metrics carry the model's id: they show
        self.metrics(run, [(k, v, stamp, 0) for k, v in record.values.items()],  # on its page
                     tags=tags, model_id=model_id)

    def end(self, run: int, state: str, reason: str) -> None:
        """Tag the Optuna state and reason, stop the system metrics, end the run."""
        me = self._runs.pop(run, None)
        self._slow_runs.discard(run)
        if me is None or me.run_id is None:
            return  # never created; that failure was reported
        if me.monitor is not None:
            try:
                me.monitor.finish()
            except Exception as exc:  # never keep the run from ending
                _log.warning("system metrics of run %s: %s", me.run_id, exc)
        self._answering(me.study.uri)
        end_run(_client(me.study.uri), me.run_id, state, reason)

    def finish_study(self, study: str, trials: list, directions: list[str],
                     drawing: bool = False) -> None:
        """Plots, trials.csv, best params and report.html on the parent run, which then
        ends FINISHED unless trials of the study still run (other workers): the last one to
        finish leaves the final picture. Runs left RUNNING by dead workers are ended first.
        Drawn here on the slow lane, after the last trial's own files."""
        from .study_artifacts import log_study_summary, study_copy, write_study_artifacts

        state = self._studies.get(study)
        if state is None or state.parent_run_id is None:
            return  # (an answer the drawer gives meanwhile is read by its next request)
        copy = study_copy(state.name, trials, directions)
        folder = Path(tempfile.mkdtemp(prefix="tunetrack-study-"))
        client = _client(state.uri)

        def meanwhile(drawn: Any) -> None:  # while the drawer process still draws
            self._answering(state.uri)
            end_orphans(client, state.experiment_id, state.parent_run_id, trials)
            _report_into(copy, folder, state.uri, drawn)

        drawn = write_study_artifacts(copy, folder, self._drawer, drawing=drawing,
                                      meanwhile=meanwhile)
        log_study_summary(client, state.parent_run_id, state.name, trials, directions,
                          folder, drawn.skipped)


def _report_into(study: Any, folder: Path, tracking_uri: str, drawn: Any) -> None:
    """`report.html` (what `tunetrack report` writes, with the plots just `drawn`) into
    `folder`, for the parent run; a report that cannot be made is logged and left out,
    never fails the study."""
    from .report import write_report

    try:
        write_report(study, folder / "report.html", tracking_uri=tracking_uri, drawn=drawn)
    except Exception as exc:
        _log.warning("report.html not logged to the parent run: %s", first_line(exc))


def end_run(client: Any, run_id: str, state: str, reason: str) -> None:
    """Tag `optuna.state`/`optuna.reason` and end the run FINISHED / KILLED / FAILED."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(T.OPTUNA_STATE, state),
                                   RunTag(T.OPTUNA_REASON, T.clip(reason))], synchronous=True)
    client.set_terminated(run_id, T.RUN_STATUS[state])


def end_orphans(client: Any, experiment_id: str, parent_run_id: str, trials: list
                ) -> list[str]:
    """End child runs still RUNNING although Optuna has finished their trial (a worker
    died between Optuna recording the trial's end and the run's end). Trials Optuna still
    runs are not touched. Returns the run ids ended."""
    runs = client.search_runs([experiment_id], filter_string=(
        f"tags.`{T.PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'"),
        max_results=5000)
    by_number = {t.number: t for t in trials}
    ended = []
    for run in runs:
        number = run.data.tags.get(T.OPTUNA_TRIAL, "")
        trial = by_number.get(int(number)) if number.isdigit() else None
        if trial is None or not trial.state.is_finished():
            continue
        state = trial.state.name if trial.state.name in T.RUN_STATUS else "FAIL"
        end_run(client, run.info.run_id, state, f"run left RUNNING by a worker that stopped; "
                                                f"Optuna state {trial.state.name}")
        ended.append(run.info.run_id)
    return ended


@contextlib.contextmanager
def _parent_lock(uri: str, experiment: str, study_name: str) -> Iterator[None]:
    """Serialise find-or-create of the parent between processes of a local SQLite store
    (a lock file beside the artifacts); remote stores rely on `_create_parent`'s re-check.
    The helper handles one message at a time, so threads need no lock."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    import hashlib

    name = hashlib.blake2b(repr((uri, experiment, study_name)).encode(),
                           digest_size=6).hexdigest()
    path = db.parent / "mlruns" / f".parent-{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path):
        yield


def _malloc_trim() -> Callable[[int], object]:
    """glibc's malloc_trim: each slow job frees a model and its figures' buffers, and with
    two threads allocating, glibc otherwise keeps most of that memory in its arenas."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda *_: None
