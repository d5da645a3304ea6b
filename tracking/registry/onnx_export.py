"""The champion's network as ONNX too (`registry.export: [onnx]`), logged only once it is
shown to answer as the torch network does.

At promotion, because the champion is the model people deploy, and promotion already
holds its network and its logits on the test split. `torch.onnx.export` (the dynamo
exporter, batch dimension dynamic) writes the graph; onnxruntime runs it on every test
image; it is logged only when the softmax probabilities of both differ by at most
`TOLERANCE` (max absolute difference over images and classes). Probabilities, not
logits: they are what the served model answers with, and they lie in [0, 1], whereas a
logit's float32 rounding grows with its magnitude (one ulp of 40 is 4e-6), so an absolute
bound on logits would judge the network's scale more than the export. The largest logit
difference is reported beside it.

Where it goes: a second MLflow LoggedModel, `onnx`, of the champion's run, in MLflow's
onnx flavor (`mlflow.onnx.load_model`, or `mlflow.pyfunc.load_model` on onnxruntime;
float32 (N, C, H, W) pixels in [0, 1] -> logits, as the PyTorch flavor of the registered
version), one self-contained `model.onnx`; the registered version's tag `tunetrack.onnx`
holds its `models:/<id>` URI. A network that does not export, or answers differently,
becomes one line of the promotion's output and nothing is logged; the promotion stands.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunetrack.models.errors import first_line

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient

EXPORT_FORMATS = ("onnx",)  # what `registry.export` may list
PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # torch.onnx.export needs onnxscript
TOLERANCE = 1e-5  # max |p_onnx - p_torch| over the test split's images and classes
MODEL_NAME = "onnx"  # the LoggedModel's name, beside the run's `model`
ONNX_TAG = "tunetrack.onnx"  # on the registered version: models:/<id> of the ONNX model
DIFFERENCE_TAG = "tunetrack.onnx_max_abs_diff"  # ... and the probabilities' difference
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def export_problem(fmt: str) -> str | None:
    """Why `fmt` cannot be exported here (unknown, or its packages are missing); None when
    it can. Reads no package, so `validate` stays fast."""
    if fmt not in EXPORT_FORMATS:
        return f"unknown format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}"
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        return (f"{fmt} needs {', '.join(missing)}, not installed here: "
                f"pip install 'tunetrack[onnx]'")
    return None


@dataclass(frozen=True)
class Agreement:
    """How closely the ONNX graph under onnxruntime answers as the torch network."""

    n: int  # test images compared
    max_probability_diff: float  # max |p_onnx - p_torch|: the criterion
    max_logit_diff: float  # max |logit_onnx - logit_torch|: reported, not judged

    @property
    def within_tolerance(self) -> bool:
        return self.max_probability_diff <= TOLERANCE

    def describe(self) -> str:
        return (f"max |p_onnx - p_torch| = {self.max_probability_diff:.2g} (tolerance "
                f"{TOLERANCE:g}), max logit difference {self.max_logit_diff:.2g}, on "
                f"{self.n} test images")


def to_onnx(network: torch.nn.Module, example: torch.Tensor) -> Any:
    """The ONNX `ModelProto` of `network` for float32 (N, C, H, W) pixels, N dynamic
    (input `pixels`, output `logits`). Raises whatever `torch.onnx.export` raises."""
    import torch

    with warnings.catch_warnings():
        # a loaded pt2 graph cannot be switched to eval(); its graph is in eval already
        warnings.filterwarnings("ignore", message="Exporting a model while it is in training")
        program = torch.onnx.export(
            network, (example,), dynamo=True, verbose=False, input_names=["pixels"],
            output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program.model_proto


def agreement(model_proto: Any, x: torch.Tensor, torch_logits: torch.Tensor,
              batch_size: int = 1024) -> Agreement:
    """Run `model_proto` with onnxruntime (CPU) on `x` and compare with `torch_logits`."""
    import numpy as np
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(model_proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    pixels = x.cpu().float().numpy()
    logits = torch.from_numpy(np.concatenate([
        session.run(None, {"pixels": pixels[i:i + batch_size]})[0]
        for i in range(0, len(pixels), batch_size)]))
    reference = torch_logits.float()
    if logits.shape != reference.shape:
        raise ValueError(f"ONNX logits have shape {tuple(logits.shape)}, torch's "
                         f"{tuple(reference.shape)}")
    # float64 softmax of both: the difference is the export's, not the softmax's rounding
    probabilities = (logits.double().softmax(1) - reference.double().softmax(1)).abs()
    return Agreement(len(x), float(probabilities.max()),
                     float((logits - reference).abs().max()))


def export_reason(exc: BaseException) -> str:
    """One line from torch.onnx's paragraph of advice: its innermost cause's first line
    (e.g. "No ONNX function found for <OpOverload(op='aten._linalg_svd', ...)>")."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {_ANSI.sub('', first_line(exc))}"


@dataclass(frozen=True)
class OnnxOutcome:
    model_id: str | None  # the logged ONNX model; None when nothing was logged
    agreement: Agreement | None  # None when it could not be compared
    line: str  # for the promotion's output


def log_onnx(client: MlflowClient, *, run_id: str, experiment_id: str,
             network: torch.nn.Module, x: torch.Tensor, torch_logits: torch.Tensor,
             metadata: dict[str, Any]) -> OnnxOutcome:
    """Export `network`, check it on the test pixels `x` against its `torch_logits`, and
    log it as the LoggedModel `onnx` of `run_id` when it agrees."""
    if problem := export_problem("onnx"):
        return OnnxOutcome(None, None, f"onnx: not exported: {problem}")
    if not len(x):
        return OnnxOutcome(None, None, "onnx: not exported: no test images to check it on")
    example = x[:2].cpu().float() if len(x) > 1 else x[:1].cpu().float().repeat(2, 1, 1, 1)
    try:
        proto = to_onnx(network, example)
        check = agreement(proto, x, torch_logits)
    except Exception as exc:  # networks torch.onnx cannot translate, ops onnxruntime lacks
        return OnnxOutcome(None, None, f"onnx: not exported: {export_reason(exc)}")
    if not check.within_tolerance:
        return OnnxOutcome(None, check, f"onnx: not logged, it answers differently from "
                                        f"torch: {check.describe()}")
    model_id = _log(client, run_id=run_id, experiment_id=experiment_id, proto=proto,
                    example=example, logits=torch_logits[:2], metadata=metadata,
                    check=check)
    return OnnxOutcome(model_id, check,
                       f"onnx: logged as models:/{model_id}: {check.describe()}")


def _log(client: MlflowClient, *, run_id: str, experiment_id: str, proto: Any,
         example: torch.Tensor, logits: torch.Tensor, metadata: dict[str, Any],
         check: Agreement) -> str:
    """The checked graph as MLflow's onnx flavor, one file (no external data); `logits`
    (of some images) give the signature's output its shape."""
    import mlflow
    import mlflow.onnx
    from mlflow.models import infer_signature

    from .model_io import METADATA_KEY, new_logged_model

    pixels = example.numpy()
    requirements = [f"mlflow=={mlflow.__version__}",
                    *mlflow.onnx.get_default_pip_requirements()]
    onnx_metadata = {**metadata, "onnx_check": {
        "n": check.n, "max_probability_diff": check.max_probability_diff,
        "max_logit_diff": check.max_logit_diff, "tolerance": TOLERANCE}}
    with new_logged_model(client, run_id=run_id, experiment_id=experiment_id,
                          name=MODEL_NAME) as (model_id, mlflow_model, path):
        mlflow.onnx.save_model(
            proto, str(path), mlflow_model=mlflow_model, save_as_external_data=False,
            signature=infer_signature(pixels, logits.float().numpy()), input_example=pixels,
            pip_requirements=requirements, metadata={METADATA_KEY: onnx_metadata})
    return model_id
