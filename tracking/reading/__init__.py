"""Reading a study back: the ranked trials table (`compare`), the self-contained HTML
report (`report_html`) with its cost section (`cost_report`), and predictions of a logged
model (`prediction`).
"""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "compare": ("compare_trials",),
    "report_html": ("build_report", "write_report"),
    "cost_report": ("cost_per_trial", "cost_section_html", "cost_to_target"),
    "prediction": ("predict",),
})
