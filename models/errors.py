"""The one exception type a user can cause.

Every layer (models, search, tracking) raises `TunetrackError` for bad input so the CLI can
print a single line and exit 2, while genuine bugs still surface as tracebacks.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TunetrackError(Exception):
    """A problem the user can fix: bad config, missing file, unreachable service."""


def unknown(kind: str, value: object, allowed: Iterable[str]) -> TunetrackError:
    """Build the standard "unknown X" error listing what is allowed and the closest match."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return TunetrackError(f"unknown {kind} {value!r}{hint}; allowed: {', '.join(allowed)}")


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message (MLflow's `.message` when it has one), or its type
    name when the message is empty: drivers and MLflow wrap causes in paragraphs, and a
    user-facing error is one line."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
