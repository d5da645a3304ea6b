"""Which of two objective values is better, for a study's directions: shared by the trials
table (`reading`), the model-logging policy (`runs`) and promotion (`registry`)."""

from __future__ import annotations

from collections.abc import Sequence

_SIGNS = {"MINIMIZE": 1, "MAXIMIZE": -1}


def direction_sign(direction: object) -> int:
    """+1 to minimize, -1 to maximize (an `optuna.study.StudyDirection` or its name):
    `sign * value` sorts best first and `sign * a < sign * b` means "a is better"."""
    return _SIGNS[str(getattr(direction, "name", direction)).upper()]


def better(a: float, b: float, direction: str) -> bool:
    sign = direction_sign(direction)
    return sign * a < sign * b


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True when `a` is at least as good as `b` everywhere and better somewhere."""
    pairs = list(zip(a, b, directions, strict=True))
    return (all(not better(y, x, d) for x, y, d in pairs)
            and any(better(x, y, d) for x, y, d in pairs))
