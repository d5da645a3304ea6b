"""Log a trained classifier as an MLflow 3 LoggedModel of a given run, and load it back.

`mlflow.pytorch.log_model` resolves the store from the *global* tracking URI (and the
experiment from the global active experiment), so under parallel trials or two stores in
one process it could write to the wrong place. The same steps are done here with an
explicit `MlflowClient`: create the LoggedModel, `save_model` into a temp folder, upload,
link it to the run as an output, finalize. `runs:/<run>/model`, `models:/<model_id>` and
registered versions all resolve to it.

Format: `pt2` (torch.export), MLflow's default: loading runs no pickled code and needs
neither tunetrack nor the model class. The batch dimension stays dynamic because the input
example holds several images. Should export fail for some architecture, the model is
saved with pickle instead (the run is tagged `tunetrack.model_format`).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature

from tunetrack.models import TunetrackError
from tunetrack.models.errors import first_line

from .. import tags as T
from ..store import quiet_downloads

_log = logging.getLogger(__name__)
MODEL_NAME = "model"  # artifact name, as in runs:/<run_id>/model
METADATA_KEY = "tunetrack"  # MLmodel metadata: classes, input_shape, study, trial, ...
FORMAT_TAG = "tunetrack.model_format"


def _pip_requirements() -> list[str]:
    """Pinned short list: MLflow must not infer requirements (slow, imports everything)."""
    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}"]


def _save(model: torch.nn.Module, path: Path, mlflow_model: Model, example: np.ndarray,
          metadata: dict[str, Any]) -> str:
    with torch.inference_mode():
        outputs = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, outputs)  # (-1, C, H, W) float32 -> (-1, K) logits
    common = dict(mlflow_model=mlflow_model, signature=signature, input_example=example,
                  pip_requirements=_pip_requirements(), metadata=metadata)
    try:
        mlflow.pytorch.save_model(model, str(path), serialization_format="pt2", **common)
        return "pt2"
    except Exception as exc:  # torch.export cannot trace every network
        _log.warning("torch.export failed (%s); saving the model with pickle instead",
                     first_line(exc))
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    mlflow_model.flavors.clear()
    mlflow.pytorch.save_model(model, str(path), serialization_format="pickle", **common)
    return "pickle"


def log_pytorch_model(client: MlflowClient, *, run_id: str, experiment_id: str,
                      model: torch.nn.Module, example: np.ndarray,
                      metadata: dict[str, Any], tags: dict[str, str] | None = None
                      ) -> tuple[str, str]:
    """Log `model` for `run_id`; return (model_id, format). `model` must be a CPU model
    nobody trains any more (`CompletedTrial.collect` made it: an unwrapped, eval-mode copy),
    so it is saved as it is, not copied again."""
    cpu_model = model.eval()
    logged = client.create_logged_model(experiment_id=experiment_id, name=MODEL_NAME,
                                        source_run_id=run_id, tags=tags)
    try:
        mlflow_model = Model(artifact_path=logged.artifact_location, run_id=run_id,
                             model_uuid=logged.model_id, model_id=logged.model_id)
        with tempfile.TemporaryDirectory(prefix="tunetrack-model-") as tmp:
            path = Path(tmp) / MODEL_NAME
            fmt = _save(cpu_model, path, mlflow_model, np.ascontiguousarray(example),
                        {METADATA_KEY: metadata})
            client.log_model_artifacts(logged.model_id, str(path))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    return logged.model_id, fmt


_LOGGED_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")


def model_location(client: MlflowClient, model_uri: str) -> str:
    """Artifact location of `model_uri`, resolved through `client` alone.

    `mlflow.artifacts.download_artifacts("models:/...")` looks logged models up in the
    *global* tracking store, whatever `tracking_uri` it is given; resolving here keeps
    every lookup on the caller's store.
    """
    if model_uri.startswith("models:/"):
        ref = model_uri[len("models:/"):].strip("/")
        if _LOGGED_MODEL_ID.fullmatch(ref):
            return client.get_logged_model(ref).artifact_location
        if "@" in ref:
            name, alias = ref.rsplit("@", 1)
            version = client.get_model_version_by_alias(name, alias).version
        elif "/" in ref:
            name, version = ref.rsplit("/", 1)
        else:
            raise TunetrackError(f"model URI {model_uri} needs a version or an alias: "
                                 f"models:/NAME/VERSION or models:/NAME@ALIAS")
        return client.get_model_version_download_uri(name, str(version))
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri[len("runs:/"):].partition("/")
        run = client.get_run(run_id)
        logged = run.data.tags.get(T.MODEL_ID)
        if path.strip("/") == MODEL_NAME and logged:
            return client.get_logged_model(logged).artifact_location
        return f"{run.info.artifact_uri.rstrip('/')}/{path}"
    return model_uri


def load_pytorch_model(model_uri: str, client: MlflowClient) -> tuple[torch.nn.Module, dict]:
    """Load `model_uri` (models:/NAME@alias, models:/NAME/N, models:/<id>,
    runs:/<run>/model, or any artifact URI / folder) onto the CPU.

    Returns the model and the tunetrack metadata stored in its MLmodel file ({} when the
    model was not logged by tunetrack). MLflow errors become one-line TunetrackErrors.
    """
    try:
        location = model_location(client, model_uri)
        with tempfile.TemporaryDirectory(prefix="tunetrack-load-") as tmp, quiet_downloads():
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=tmp, tracking_uri=client.tracking_uri)
            metadata = (Model.load(local).metadata or {}).get(METADATA_KEY, {})
            model = mlflow.pytorch.load_model(local, map_location="cpu")
    except (MlflowException, OSError) as exc:
        raise TunetrackError(f"cannot load model {model_uri}: {first_line(exc)}") from None
    if isinstance(model, torch.nn.Module) and not isinstance(model, torch.fx.GraphModule):
        model.eval()  # an exported (pt2) graph is already frozen in eval semantics
    return model, metadata


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024
                   ) -> torch.Tensor:
    """Logits of `model` on CPU tensor `x`, in batches."""
    if len(x) == 0:
        return torch.empty(0)
    return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
