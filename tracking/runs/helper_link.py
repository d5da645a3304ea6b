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

When the helper dies (killed, out of memory), a new one takes over (at most
`MAX_RESTARTS` times): every message not yet answered is kept here, with each study's
`start_study` and each open run's `create_run`, and is sent again; the new helper finds a
run the old one had created by its trial number instead of creating another
(`Writer.create_run(resume=True)`), so no run is left RUNNING and no completed trial's
model is lost.
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
MAX_RESTARTS = 3  # a helper that keeps dying (a message that kills it) is given up on
Message = tuple[str, dict[str, Any]]  # (op, kwargs)


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
        # what a new helper needs after a crash: unanswered messages, each study's start
        # and each open run's creation (seq, message), until the run's end is answered
        self._unanswered: dict[int, Message] = {}
        self._studies: dict[Any, tuple[int, Message]] = {}
        self._open_runs: dict[Any, tuple[int, Message]] = {}
        self._restarts = 0
        self._closing = False

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
        self._owner, self._dead, self._closing, self._restarts = os.getpid(), False, False, 0
        self._pending, self._results = set(), {}
        self._unanswered, self._studies, self._open_runs = {}, {}, {}
        self._spawn()
        atexit.register(self.close)

    def _spawn(self) -> None:
        """A new helper process with its own outbox and the two threads that serve it."""
        self._outbox = queue.SimpleQueue()
        env = {**FAST_FAIL_ENV, **os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
        env.update(dict.fromkeys(_THREAD_POOLS, "1"))  # the trials own the cores
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tunetrack.tracking.helper_process"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, start_new_session=True)
        for target, name in ((self._write_loop, "send"), (self._read_loop, "receive")):
            threading.Thread(target=target, args=(self._proc, self._outbox), daemon=True,
                             name=f"tunetrack-helper-{name}").start()

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
            self._keep(seq, op, kwargs)
            self._outbox.put((seq, op, kwargs))  # under the lock: a restart swaps the outbox
        return seq

    def _keep(self, seq: int, op: str, kwargs: dict[str, Any]) -> None:
        """Remember what a new helper would need if this one died before answering."""
        self._unanswered[seq] = (op, kwargs)
        if op == "start_study":
            self._studies[kwargs["study"]] = (seq, (op, kwargs))
        elif op == "create_run":
            self._open_runs[kwargs["run"]] = (seq, (op, {**kwargs, "resume": True}))

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
        if self._owner != os.getpid() or self._proc is None:
            return
        self.flush()
        with self._lock:
            self._closing = True
            proc = self._proc
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
            mine = self._owner == os.getpid() and self._proc is proc
            resent = None
            if mine and (lost or not self._closing) and self._restarts < MAX_RESTARTS:
                resent = self._restart()
            else:
                self._dead = self._dead or mine
                self._pending.clear()
                self._done.notify_all()
        if resent is not None:
            _log.warning("warning: the MLflow tracking helper stopped (exit code %s); a new "
                         "one took over (%d messages sent again)", proc.wait(), resent)
        elif lost:
            _log.warning("warning: the MLflow tracking helper stopped (exit code %s); the "
                         "study goes on without tracking (Optuna still records every trial)",
                         proc.wait())

    def _restart(self) -> int:
        """(With the lock held.) A new helper, given again each study's start, each open
        run's creation (found again, not created twice) and every unanswered message, in
        the order they were sent; returns how many were sent."""
        self._restarts += 1
        self._outbox.put(None)  # the dead helper's sending thread ends
        self._spawn()
        context = [*self._studies.values(), *self._open_runs.values()]
        replay = [(seq if seq in self._unanswered else None, op, kwargs)
                  for seq, (op, kwargs) in context]
        replay += [(seq, *self._unanswered[seq]) for seq in sorted(self._unanswered)
                   if self._unanswered[seq][0] not in ("start_study", "create_run")]
        for message in replay:
            self._outbox.put(message)
        return len(replay)

    def _answer(self, seq: int, value: Any) -> None:
        with self._done:
            op, kwargs = self._unanswered.pop(seq, ("", {}))
            if op == "end":  # the run is written: a new helper need not know it
                self._open_runs.pop(kwargs["run"], None)
            self._pending.discard(seq)
            if seq in self._wanted:
                self._wanted.discard(seq)
                self._results[seq] = value
            self._done.notify_all()


HELPER = Helper()

