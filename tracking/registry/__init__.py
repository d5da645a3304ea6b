"""The model registry: `promote` when the paired statistics (`promotion_stats`) back it,
its history, the model files (`model_io`: one MLflow model, the bare network as its
PyTorch flavor and `pyfunc_classifier`, images in and labels out, as its pyfunc), and
MLflow's rules for model names and aliases (`names`, which `validate` checks a study's
`registry:` with), and the champion's network in other formats (`onnx_export`)."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "promotion": ("DEFAULT_ALPHA", "PromotionResult", "evidence_lines", "promote",
                  "promotion_history"),
    "promotion_stats": ("PairedEvidence", "bootstrap_difference_ci", "discordant_counts",
                        "mcnemar_exact_p", "paired_evidence"),
    "model_io": ("FORMAT_TAG", "check_classifier", "load_classifier", "load_pytorch_model",
                 "local_model", "log_pytorch_model", "predict_logits", "raw_scale"),
    "names": ("alias_problem", "model_name_problem"),
    "onnx_export": ("EXPORT_FORMATS", "export_problem", "log_onnx"),
})
