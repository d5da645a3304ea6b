"""SIGTERM handled like Ctrl-C: what `docker stop`, Kubernetes and systemd send.

Without a handler, SIGTERM ends Python at once: the running trial, its MLflow run and the
study's parent run stay RUNNING, and the orphaned tracking helper writes into a closed
pipe. Raising `Terminated` (a `KeyboardInterrupt`) instead takes the Ctrl-C path that is
already tested: the trial fails with its reason, its run ends FAILED, the helper is
drained, one line is printed; only the reason (`terminated (SIGTERM)`) and the exit code
(143, the shell's 128 + 15) differ.
"""

from __future__ import annotations

import signal

INTERRUPTED = "interrupted (SIGINT)"  # the `reason` of a trial stopped by Ctrl-C
TERMINATED = "terminated (SIGTERM)"  # ... and by SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised wherever the main thread is, as Ctrl-C's KeyboardInterrupt."""


def raise_on_sigterm() -> None:
    """From now on the first SIGTERM raises `Terminated` in the main thread; later ones are
    ignored, so the clean-up they asked for is not itself cut short (the grace period's
    SIGKILL still ends a process that takes too long)."""

    def terminate(_signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)


def interruption(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM behind `exc` (itself or in its context chain: an error raised
    while the interrupt was handled, e.g. a database call cut off), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


def reason(exc: KeyboardInterrupt) -> str:
    """The FAIL reason of a trial that `exc` stopped."""
    return TERMINATED if isinstance(exc, Terminated) else INTERRUPTED


def exit_code(exc: KeyboardInterrupt) -> int:
    """143 for SIGTERM, 130 for Ctrl-C (128 + the signal's number, as a shell reports it)."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def one_line(exc: KeyboardInterrupt) -> str:
    """What the command prints on its way out."""
    return "terminated" if isinstance(exc, Terminated) else "interrupted"
