"""`python -m tunetrack.tracking.helper_process`: the helper process's main loop, started
by the study process's `HELPER` (`runs/helper_link.py`, which says why a process)."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
from typing import Any

from ..store import checkpoint_wal

_log = logging.getLogger(__name__)


def serve() -> None:
    """The helper's main loop: read messages until stdin closes, answer each when done."""
    import gc
    import signal

    gc.disable()  # until warm-up has imported everything (Writer.warm_up; search/startup_gc.py)
    from .writer import Writer

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(5)  # background work: the trials come first when they share a core
    inbox = sys.stdin.buffer
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints go to stderr
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if os.environ.get("TUNETRACK_LOG_LEVEL") != "DEBUG":  # -vv shows it
        # MLflow logs each failed database call with its traceback; the lanes say the
        # failure in one line (lanes.py)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    lock = threading.Lock()

    def answer(seq: int, value: Any) -> None:
        with lock:
            try:
                answers.write(pickle.dumps((seq, value)))
                answers.flush()
            except OSError:
                pass  # the study process is gone

    writer = Writer(answer)
    while True:
        try:
            seq, op, payload = pickle.load(inbox)
        except (EOFError, OSError, pickle.UnpicklingError):
            break
        try:
            kwargs = pickle.loads(payload)
        except Exception as exc:  # e.g. a class this process cannot import: say so, go on
            _log.warning("MLflow logging failed: %s could not be read (%s)", op, exc)
            answer(seq, None)
            continue
        writer.dispatch(seq, op, kwargs)
    writer.close()
    answers.close()
    checkpoint_wal()  # mlflow.db whole without its -wal file
    sys.stderr.flush()
    os._exit(0)  # all written: skip tearing down torch, matplotlib and MLflow (~1 s)


if __name__ == "__main__":
    serve()
