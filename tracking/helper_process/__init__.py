"""The tracking helper process (`python -m tunetrack.tracking.helper_process`, started by
`runs.HELPER`): every MLflow write of a study, off the trials' path. `lanes` runs messages on
a quick and a slow lane and keeps the store's "down" state, `writer` turns each message into
MLflow calls, `parent_run` finds or creates the study's shared parent run under a lock.
"""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "writer": ("Writer", "end_orphans"),
    "lanes": ("short_reason", "tracking_errors"),
})
