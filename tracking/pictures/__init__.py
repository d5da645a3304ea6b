"""A trial's figures (`figures`, `insight`) and a study's plots (`study_plots`, chosen by
`plot_choice`, partly drawn in a second process, `plot_drawer`); heavy (matplotlib, Optuna's
plots): loaded on first use."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "figures": ("draw_confusion", "draw_curves", "draw_lr_curve", "draw_misclassified",
                "draw_per_class_error"),
    "insight": ("draw_feature_maps", "draw_first_layer"),
    "study_plots": ("StudySummary", "log_study_summary", "write_plots",
                    "write_study_artifacts"),
    "plot_choice": ("plot_list",),
    "plot_png": ("png_of", "png_or_why", "study_copy"),
    "plot_drawer": ("ASIDE", "PlotDrawer"),
})
