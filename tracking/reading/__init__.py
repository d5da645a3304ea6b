"""Reading a study back: the ranked trials table (`compare`), the HTML report (`report_html`,
`cost_report`) and a logged model's predictions (`prediction`)."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "compare": ("compare_trials", "rank_key"),
    "report_html": ("build_report", "write_report"),
    "cost_report": ("COST_KEY", "cost_per_trial", "cost_section_html", "cost_to_target"),
    "prediction": ("predict",),
})
