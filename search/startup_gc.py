"""The cyclic garbage collector off while `tunetrack` starts, back on for the training.

Importing torch, SQLAlchemy and Optuna creates hundreds of thousands of objects, none of
them garbage, and the collector walks them again and again: with it off those imports
(then with torch._dynamo, which torch.optim's optimizers imported before the trainer's
went lean) took 2.24 s instead of 2.55-2.68 s (2026-12-01, 2-vCPU Intel Xeon VM).
Reference counting still frees everything that is not in a cycle. Once the first trial's
trainer is built (every import a trial needs is done by then), or the first trial has
ended, what was imported is frozen (never walked again) and the collector is back on for
the rest of the study.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Switch the collector off (the `tunetrack` command does this as it starts)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Freeze what exists and switch the collector on again, if `pause` switched it off
    (a library user's own `gc.disable()` is left alone)."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
