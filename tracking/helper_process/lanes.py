"""The helper's two lanes, one thread each, and the store's "down" state.

Quick writes (parent and trial runs, epoch metrics, ends) go on one lane, slow work (a
completed trial's files and model, the study's plots) on the other. Messages of one run
stay in order: once a run has slow work, its later messages (its end) queue behind it.

Failures never reach the study: a failed write prints one warning per (message, error
type), skips the rest of that run's data (its end is still tried, so no run stays RUNNING
for a blip that passed) and marks the store down; while it is down, each new run first
probes the store with one quick request (and for a few seconds after a failure, new runs
do not even try), so a dead server costs the study nothing.

A full disk is not a blip: once a write fails for want of space (`runs.full_path`), one
line says what filled up and where, the open runs of that store (the parent included) are
ended FAILED at once, while the room a cut-off write freed is still there, nothing more is
written to it but the Optuna states of those runs as their trials end, and the helper's last
line names the runs it could not end.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunetrack.models import TunetrackError
from tunetrack.models.errors import first_line

from ..runs import disk_full_line, full_path
from ..store import check_reachable, sqlite_path

_log = logging.getLogger(__name__)
RETRY_AFTER_S = 5.0  # after a failure, new runs skip the store this long
_SLOW_OPS = ("completed", "finish_study")
_CONNECTION_HINTS = ("Max retries exceeded", "NewConnectionError", "Connection refused",
                     "Failed to establish a new connection")


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
class StudyState:
    uri: str
    name: str
    start: dict[str, Any]  # the start_study message, to try again after a failure
    experiment_id: str | None = None
    parent_run_id: str | None = None


@dataclass
class RunState:
    study: StudyState
    number: int
    run_id: str | None = None
    artifact_uri: str = ""
    monitor: Any = None  # mlflow SystemMetricsMonitor
    data: Any = None  # the trial's DataConfig: the logged model's raw pixel scale
    broken: bool = False  # a write failed: skip the rest of this run's data


class Lanes:
    """Runs each message `op(**kwargs)` as the method `op` of this object (a `Writer`) on
    its lane, in order, and reports it with `answer(seq, result)`; a failure is warned
    about once and marks the run broken and the store down."""

    def __init__(self, answer: Callable[[int, Any], None]):
        self._answer = answer
        self._studies: dict[str, StudyState] = {}
        self._runs: dict[int, RunState] = {}
        self._slow_runs: set[int] = set()
        self._down: dict[str, float] = {}  # store -> when its last write failed
        self._full: dict[str, str] = {}  # store -> the file its disk had no room for
        self._unended: dict[str, dict[str, str]] = {}  # full store -> run id -> label
        self._ended_failed: set[str] = set()  # run ids ended FAILED for a full store
        self._warned: set[tuple[str, str]] = set()
        self._errors: tuple[type[BaseException], ...] | None = None
        self._lanes = [queue.Queue(), queue.Queue()]
        for lane, name in zip(self._lanes, ("quick", "slow"), strict=True):
            threading.Thread(target=self._work, args=(lane,), daemon=True,
                             name=f"tunetrack-{name}").start()
        # the slow lane imports torch and matplotlib once the quick lane has MLflow and
        # the store (the first runs are what the first trials wait for)
        self._quick_ready = threading.Event()
        self._dispatched = 0
        self._lanes[1].put((None, "warm_up", {}))

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
        self._lanes[slow].put((seq, op, kwargs))

    def close(self) -> None:
        """Return once every message is carried out (imports still running for nothing
        are not waited for)."""
        self._quick_ready.set()
        if self._dispatched:
            for lane in self._lanes:
                lane.join()
        for uri, runs in self._unended.items():
            study = next(s for s in self._studies.values() if s.uri == uri)
            for run_id, label in list(runs.items()):  # the study process may have made room
                self.end_failed(study, run_id, label)
            if runs:
                _log.warning("error: %s; left RUNNING: %s (a later `tunetrack run` of the "
                             "study ends them once there is room)",
                             disk_full_line("MLflow store", self._full[uri]),
                             ", ".join(runs.values()))

    def signal(self, event: threading.Event) -> None:
        event.set()

    def wait(self, event: threading.Event) -> None:
        event.wait()

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
        study = run.study if run else self._studies.get(kwargs.get("study", ""))
        if store and study is not None:
            full = full_path(exc, sqlite_path(study.uri))
            if full is not None:
                self._filled(study, full)
                return
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

    def _filled(self, study: StudyState, path: str) -> None:
        """The store's disk is full: say so once and end its open runs FAILED now."""
        if study.uri in self._full:
            return
        self._full[study.uri] = path
        _log.warning("error: %s; its open runs end FAILED and nothing more is logged to it "
                     "(the study goes on: Optuna still records every trial)",
                     disk_full_line("MLflow store", path))
        if study.parent_run_id is not None:  # first: it stands for the whole study
            self.end_failed(study, study.parent_run_id, "the parent run")
        for run in list(self._runs.values()):
            if run.study is study and run.run_id is not None:
                self.end_failed(study, run.run_id, f"trial {run.number}")

    def end_failed(self, study: StudyState, run_id: str, label: str,
                   tags: dict[str, str] | None = None) -> None:
        """End a run of a full store FAILED (once; an update in place, the write most
        likely to fit), then add `tags` (its Optuna state and why) if they fit; a run that
        cannot be ended is named by `close`."""
        from mlflow.entities import RunTag

        from ..store import client_for

        client = client_for(study.uri)
        unended = self._unended.setdefault(study.uri, {})
        if run_id not in self._ended_failed:
            try:
                client.set_terminated(run_id, "FAILED")
            except Exception:  # no room (or no store): named by `close`, never raised here,
                unended[run_id] = label  # where it would end the lane's thread
                return
            self._ended_failed.add(run_id)
            unended.pop(run_id, None)
        if tags:
            with contextlib.suppress(Exception):  # no room for the why: the status counts
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()],
                                 synchronous=True)

    def _answering(self, uri: str, *, new_run: bool = False) -> None:
        """After a failure, one quick probe (no MLflow retries) before writing again; a
        new run is not even tried for RETRY_AFTER_S (a store that answers the probe but
        fails the writes would cost the helper seconds per trial)."""
        if uri in self._full:
            raise _Skipped(uri)  # a full disk does not empty itself
        failed_at = self._down.get(uri)
        if failed_at is None:
            return
        if new_run and time.monotonic() - failed_at < RETRY_AFTER_S:
            raise _Skipped(uri)
        check_reachable(uri)  # raises TunetrackError while the store is down
        del self._down[uri]


def _malloc_trim() -> Callable[[int], object]:
    """glibc's malloc_trim: each slow job frees a model and its figures' buffers, and with
    two threads allocating, glibc otherwise keeps most of that memory in its arenas."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda *_: None

