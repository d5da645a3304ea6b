"""Write metrics, params and tags from one background thread per process.

A synchronous `log_batch` into SQLite costs ~25 ms (one committed transaction), which is
a large share of a small epoch. MLflow's own `log_batch(synchronous=False)` queue was
tried and rejected: its worker threads do not survive `fork`, so a worker process forked
after the parent had logged asynchronously waits forever on `RunOperations.wait()` (which
has no timeout). This queue is ~70 lines, restarts itself in a forked child, merges all
pending items of a run into one `log_batch` call, flushes per run with a timeout, and can
end a run after its data (so `TrialRun.end(wait=False)` costs the trial nothing). It
holds the GIL little (SQLite commits release it): training speed was measured unchanged
with it writing continuously.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

_log = logging.getLogger(__name__)
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits


@dataclass
class _Pending:
    client: Any  # MlflowClient
    metrics: list = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    terminate: str | None = None  # MLflow run status to end the run with, after the data


class BatchQueue:
    def __init__(self) -> None:
        self._reset()
        atexit.register(self.flush_all, 30.0)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._busy: set[str] = set()
        self._errors: dict[str, BaseException] = {}
        self._thread: threading.Thread | None = None

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="tunetrack-mlflow-log",
                                            daemon=True)
            self._thread.start()

    def submit(self, client: Any, run_id: str, *, metrics=(), params=(), tags=(),
               terminate: str | None = None) -> None:
        """Queue `Metric`/`Param`/`RunTag` entities for `run_id`; returns at once.

        `terminate` (FINISHED, KILLED, FAILED) ends the run once everything queued before
        it is written.
        """
        if self._pid != os.getpid():
            self._reset()  # forked child: the parent's thread and lock are not ours
        with self._cond:
            pending = self._pending.setdefault(run_id, _Pending(client))
            pending.metrics.extend(metrics)
            pending.params.update({p.key: p for p in params})
            pending.tags.update({t.key: t for t in tags})
            pending.terminate = terminate or pending.terminate
            self._ensure_worker()
            self._cond.notify_all()

    def flush(self, run_id: str, timeout: float = 120.0) -> None:
        """Wait until everything queued for `run_id` is written; re-raise a write error."""
        if self._pid != os.getpid():
            self._reset()
        with self._cond:
            done = self._cond.wait_for(
                lambda: run_id not in self._pending and run_id not in self._busy, timeout)
            error = self._errors.pop(run_id, None)
        if not done:
            raise TimeoutError(f"MLflow data of run {run_id} not written after {timeout:g} s")
        if error is not None:
            raise error

    def flush_all(self, timeout: float = 120.0) -> None:
        if self._pid != os.getpid():
            return
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                run_id = next(iter(self._pending))  # oldest run first
                pending = self._pending.pop(run_id)
                self._busy.add(run_id)
            try:
                _write(run_id, pending)
            except Exception as exc:  # surfaced by flush(); never kill the worker
                _log.warning("MLflow logging for run %s failed: %s", run_id, exc)
                with self._cond:
                    self._errors[run_id] = exc
            finally:
                with self._cond:
                    self._busy.discard(run_id)
                    self._cond.notify_all()


def _write(run_id: str, pending: _Pending) -> None:
    metrics, params, tags = pending.metrics, list(pending.params.values()), list(
        pending.tags.values())
    try:
        while metrics or params or tags:
            pending.client.log_batch(run_id, metrics=metrics[:_MAX_METRICS],
                                     params=params[:_MAX_PARAMS], tags=tags[:_MAX_TAGS],
                                     synchronous=True)
            metrics, params, tags = (metrics[_MAX_METRICS:], params[_MAX_PARAMS:],
                                     tags[_MAX_TAGS:])
    finally:
        if pending.terminate:  # end the run even when its data could not be written
            pending.client.set_terminated(run_id, pending.terminate)


QUEUE = BatchQueue()
