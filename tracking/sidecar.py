"""MLflow's slow work in one helper process per tracking process, so trials never wait.

Logging a completed trial costs ~1 s of CPU (matplotlib figures, sklearn report,
`torch.export` of the model) and every SQLite commit ~16 ms: a 2.0x slowdown per trial
when done inline. A background *thread* does not help: matplotlib and MLflow hold the GIL
long enough to double the training time of the next trial (measured). A process does
not share the GIL, and a 1-thread CPU trial (or a GPU trial) leaves a core for it.

The sidecar is a `ProcessPoolExecutor` with a single spawned worker, so tasks run one at
a time in submission order: a run is created before its metrics land, and its end comes
after its data. Each task returns a `Future`; `drain()` waits for all of them (end of
study, `compare`, `promote`); interpreter exit waits for them too. Spawned, not forked:
the parent holds torch's thread pools and database connections, which a fork would copy
half-alive. Unlike a plain spawn, the helper does not re-import the caller's `__main__`:
tasks live in tunetrack's modules, and a user's script that calls `run_study` without an
`if __name__ == "__main__":` guard would otherwise run again inside the helper.

Inside the helper, slow work (figures, model export) goes to a second thread through
`in_background`, so it never holds up the quick writes queued behind it: the next trial's
run is created while the last one's figures are drawn. `drain()` waits for both.

The helper ignores SIGINT (Ctrl-C stops the study; the sidecar still writes what was
queued, e.g. the interrupted trial's end) and exits by itself when its parent dies, so a
SIGKILLed worker leaves no orphan process.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

_log = logging.getLogger(__name__)
PARENT_POLL_S = 0.5


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            os._exit(0)  # parent gone: nobody will read our results


def _init_worker(parent: int) -> None:
    """Runs once in the helper process, before any task. The helper inherits the parent's
    environment as it is when the helper starts (MLflow's retry and credential settings)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(5)  # background work: the trials come first when they share a core
    os.environ["MPLBACKEND"] = "Agg"
    for pool in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[pool] = "1"  # the trials own the cores: no spinning thread pools here
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="tunetrack-sidecar-watch").start()


_SPAWN_PATCH = threading.Lock()


class _HelperProcess(multiprocessing.context.SpawnProcess):
    """A spawned process whose start-up skips importing the parent's `__main__`."""

    @staticmethod
    def _Popen(process_obj):
        from multiprocessing import popen_spawn_posix, spawn

        real = spawn.get_preparation_data

        def without_main(name: str) -> dict[str, Any]:
            data = real(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        with _SPAWN_PATCH:
            spawn.get_preparation_data = without_main
            try:
                return popen_spawn_posix.Popen(process_obj)
            finally:
                spawn.get_preparation_data = real


class _HelperContext(multiprocessing.context.SpawnContext):
    Process = _HelperProcess


def _context() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context("spawn") if os.name == "nt" else _HelperContext()


# ---- inside the helper: the slow lane ---------------------------------------------------

_SLOW: queue.Queue | None = None
_SLOW_GUARD = threading.Lock()


def in_background(job: Callable[[], None]) -> None:
    """Run `job` on the helper's slow-lane thread, after the slow jobs queued before it.
    Call only from a task (that is, inside the helper). A failing job is logged."""
    global _SLOW
    with _SLOW_GUARD:
        if _SLOW is None:
            _SLOW = queue.Queue()
            threading.Thread(target=_slow_loop, args=(_SLOW,), daemon=True,
                             name="tunetrack-sidecar-slow").start()
            atexit.register(_SLOW.join)  # the helper exits only once its slow work is done
    _SLOW.put(job)


def _slow_loop(jobs: queue.Queue) -> None:
    trim = _malloc_trim()
    while True:
        job = jobs.get()
        try:
            job()
        except Exception as exc:
            _log.warning("MLflow logging failed: %s", exc)
        finally:
            del job  # the trial's model and arrays go now, not when the next job arrives
            trim(0)
            jobs.task_done()


def _malloc_trim() -> Callable[[int], object]:
    """glibc's malloc_trim: each slow job frees a model and its figures' buffers, and with
    two threads allocating, glibc otherwise keeps most of that memory in its arenas."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda *_: None


_DRAIN_HOOKS: list[Callable[[], None]] = []


def before_drain(hook: Callable[[], None]) -> None:
    """Register work that `drain()` must see done, run in the helper when a drain starts
    (e.g. logging models that were held back until the study's end)."""
    if hook not in _DRAIN_HOOKS:
        _DRAIN_HOOKS.append(hook)


def _barrier() -> None:
    """A task that runs the drain hooks and returns once the slow lane is empty."""
    for hook in _DRAIN_HOOKS:
        hook()
    if _SLOW is not None:
        _SLOW.join()


class Sidecar:
    """The process-wide helper; started on first use, restarted in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._pool: cf.ProcessPoolExecutor | None = None
        self._pending: set[cf.Future] = set()
        # at interpreter exit, concurrent.futures runs the queued tasks to the end and the
        # helper finishes its slow lane before it exits (see `in_background`)

    def _executor(self) -> cf.ProcessPoolExecutor:
        if self._pid != os.getpid() or self._pool is None:
            self._pid, self._pending = os.getpid(), set()  # a fork's copy is not ours
            self._pool = cf.ProcessPoolExecutor(
                max_workers=1, mp_context=_context(),
                initializer=_init_worker, initargs=(os.getpid(),))
        return self._pool

    def submit(self, task: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Queue `task(*args, **kwargs)` for the helper; arguments must pickle."""
        with self._lock:
            try:
                future = self._executor().submit(task, *args, **kwargs)
            except cf.BrokenExecutor:  # the helper died (e.g. killed): start a new one
                self._pool = None
                future = self._executor().submit(task, *args, **kwargs)
            self._pending.add(future)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: cf.Future) -> None:
        with self._lock:
            self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            _log.warning("MLflow logging failed: %s", future.exception())

    def start_drain(self) -> list[cf.Future]:
        """Ask the helper to finish everything queued so far (slow lane included) and
        return the futures to wait for; the caller can do other work meanwhile."""
        if self._pid != os.getpid() or self._pool is None:
            return []
        self.submit(_barrier)
        with self._lock:
            return list(self._pending)

    def drain(self, timeout: float | None = 300.0) -> bool:
        """Wait until every task queued so far is done, slow lane included; False if
        `timeout` ran out."""
        _, not_done = cf.wait(self.start_drain(), timeout=timeout)
        return not not_done

    def helper_pid(self) -> int | None:
        """Process id of the helper, if it is running (for benchmarks and tests)."""
        pool = self._pool if self._pid == os.getpid() else None
        processes = getattr(pool, "_processes", None) or {}
        return next(iter(processes), None)


SIDECAR = Sidecar()
