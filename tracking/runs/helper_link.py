"""The study process's link to the tracking helper: one child process per study process
that does all MLflow writing (its inside: the `helper_process` room).

Why a process: logging a completed trial costs ~1 s of CPU (figures, the report, the
model export) and every SQLite commit ~16 ms; done inline that doubled each trial, and a
background *thread* did not help (matplotlib and MLflow hold the GIL). A one-thread CPU
trial (or a GPU trial) leaves a core for the helper.

How: `python -m tunetrack.tracking.helper_process`, started with `subprocess` (so it never
re-imports the caller's `__main__`). The study process writes pickled messages
`(seq, op, kwargs)` to the helper's stdin from a background thread and never waits for
them; the helper answers `(seq, result)` on its own stdout once a message is done (its
real stdout goes to stderr). Its `Writer` handles the messages in order, slow work
(figures, models, study plots) on a second lane so a new trial's run is never queued
behind them. `flush()` waits for every answer; interpreter exit does that too, so a
study's record is complete when its process ends.

Ctrl-C goes to the study, not the helper (its own session, SIGINT ignored); when the
study process dies, the helper's stdin closes and it exits after what it was given.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
from typing import Any

_log = logging.getLogger(__name__)
# MLflow's REST client retries a dead server for ~4 minutes per call; the helper gives up
# after ~3 s (2 retries, 1 s back-off) unless the user set these themselves
FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
_THREAD_POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class Helper:
    """The study process's end of the helper; one per process (`HELPER`), started on
    first use. Every method returns at once except `result` and `flush`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._proc: subprocess.Popen | None = None
        self._owner: int | None = None  # pid that started it (a fork must not share it)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._seq = 0
        self._pending: set[int] = set()
        self._results: dict[int, Any] = {}
        self._wanted: set[int] = set()  # seqs whose result someone will ask for
        self._dead = False

    @property
    def pid(self) -> int | None:
        proc = self._proc if self._owner == os.getpid() else None
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def usable(self) -> bool:
        return not (self._dead and self._owner == os.getpid())

    def start(self) -> None:
        """Start the helper now (it imports MLflow while the caller does other work)."""
        with self._lock:
            self._ensure_started()

    def _ensure_started(self) -> None:
        if self._owner == os.getpid() and self._proc is not None:
            return
        self._owner, self._dead = os.getpid(), False
        self._outbox, self._pending, self._results = queue.SimpleQueue(), set(), {}
        env = {**FAST_FAIL_ENV, **os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
        env.update(dict.fromkeys(_THREAD_POOLS, "1"))  # the trials own the cores
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tunetrack.tracking.helper_process"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, start_new_session=True)
        for target, name in ((self._write_loop, "send"), (self._read_loop, "receive")):
            threading.Thread(target=target, args=(self._proc, self._outbox), daemon=True,
                             name=f"tunetrack-helper-{name}").start()
        atexit.register(self.close)

    def send(self, op: str, *, want_result: bool = False, **kwargs: Any) -> int | None:
        """Queue `op(**kwargs)` for the helper; returns its sequence number (None when the
        helper is gone). Arguments must pickle."""
        with self._lock:
            if not self.usable:
                return None
            self._ensure_started()
            self._seq += 1
            seq = self._seq
            self._pending.add(seq)
            if want_result:
                self._wanted.add(seq)
        self._outbox.put((seq, op, kwargs))
        return seq

    def ready(self, seq: int | None) -> bool:
        with self._lock:
            return seq is None or seq not in self._pending

    def result(self, seq: int | None, timeout: float | None = None) -> Any:
        """The answer to message `seq` (waiting up to `timeout`), or None when it failed,
        is not done in time, or the helper is gone."""
        if seq is None:
            return None
        with self._done:
            self._done.wait_for(lambda: seq not in self._pending, timeout)
            return self._results.pop(seq, None)

    def flush(self, timeout: float | None = 600.0) -> bool:
        """Wait until every message sent so far is done; False when `timeout` ran out."""
        with self._done:
            if self._owner != os.getpid():
                return True
            last = self._seq
            return self._done.wait_for(
                lambda: not any(s <= last for s in self._pending), timeout)

    def close(self) -> None:
        """Let the helper finish its work and exit (at interpreter exit)."""
        proc = self._proc if self._owner == os.getpid() else None
        if proc is None:
            return
        self.flush()
        self._outbox.put(None)
        # a blocking wait in a thread: `Popen.wait(timeout)` polls, and noticed the exit
        # up to 50 ms late, at the very end of every study
        exited = threading.Event()
        threading.Thread(target=lambda: (proc.wait(), exited.set()), daemon=True,
                         name="tunetrack-helper-exit").start()
        if not exited.wait(timeout=60):
            proc.kill()

    # ---- the two threads of the study process's side ----------------------------------

    def _write_loop(self, proc: subprocess.Popen, outbox: queue.SimpleQueue) -> None:
        pipe = proc.stdin
        while (message := outbox.get()) is not None:
            seq, op, kwargs = message
            try:
                payload = pickle.dumps(kwargs, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # a bug: say so, never stop the study
                _log.warning("MLflow logging failed: %s cannot be sent (%s)", op, exc)
                self._answer(seq, None)
                continue
            try:
                pipe.write(pickle.dumps((seq, op, payload), protocol=pickle.HIGHEST_PROTOCOL))
                pipe.flush()
            except (OSError, ValueError):
                break  # the helper is gone; the reader notices
        pipe.close()

    def _read_loop(self, proc: subprocess.Popen, _outbox: queue.SimpleQueue) -> None:
        pipe = proc.stdout
        while True:
            try:
                seq, value = pickle.load(pipe)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            self._answer(seq, value)
        with self._done:
            lost = bool(self._pending)
            if self._owner == os.getpid() and self._proc is proc:
                self._dead = True
            self._pending.clear()
            self._done.notify_all()
        if lost:
            _log.warning("warning: the MLflow tracking helper stopped (exit code %s); the "
                         "study goes on without tracking (Optuna still records every trial)",
                         proc.wait())

    def _answer(self, seq: int, value: Any) -> None:
        with self._done:
            self._pending.discard(seq)
            if seq in self._wanted:
                self._wanted.discard(seq)
                self._results[seq] = value
            self._done.notify_all()


HELPER = Helper()

