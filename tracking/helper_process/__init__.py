"""The helper process (`python -m tunetrack.tracking.helper_process`, started by
`runs.HELPER`): every MLflow write of a study, off the trials' path."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "writer": ("Writer", "end_orphans"),
    "lanes": ("short_reason", "tracking_errors"),
})
