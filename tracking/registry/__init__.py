"""The model registry: `promote` when the paired statistics (`promotion_stats`) back it,
its history, the MLflow PyTorch model files (`model_io`), and MLflow's rules for model names
and aliases (`names`, which `validate` checks a study's `registry:` with)."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "promotion": ("DEFAULT_ALPHA", "PromotionResult", "evidence_lines", "promote",
                  "promotion_history"),
    "promotion_stats": ("PairedEvidence", "bootstrap_difference_ci", "discordant_counts",
                        "mcnemar_exact_p", "paired_evidence"),
    "model_io": ("FORMAT_TAG", "load_pytorch_model", "log_pytorch_model", "predict_logits"),
    "names": ("alias_problem", "model_name_problem"),
})
