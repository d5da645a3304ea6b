"""Log a trained classifier as an MLflow 3 LoggedModel of a given run, and load it back.

`mlflow.pytorch.log_model` resolves the store from the *global* tracking URI (and the
experiment from the global active experiment), so under parallel trials or two stores in
one process it could write to the wrong place. The same steps are done here with an
explicit `MlflowClient`: create the LoggedModel, save the model into a temp folder, upload,
link it to the run as an output, finalize. `runs:/<run>/model`, `models:/<model_id>` and
registered versions all resolve to it.

One model folder, two flavors over the same network file `data/`:
- `pytorch`: the bare network (float32 (N, C, H, W) pixels in [0, 1] -> logits), for
  `mlflow.pytorch.load_model` and promotion. Format `pt2` (torch.export), MLflow's default:
  loading runs no pickled code and needs neither tunetrack nor the model class; the batch
  dimension stays dynamic because the input example holds several images. Should export
  fail for some architecture, the network is saved with pickle instead (the run is tagged
  `tunetrack.model_format`), tunetrack's classes pickled by value and the user's modules
  beside it as `code_paths` (`model_code`).
- `python_function`: `pyfunc_classifier` (shipped in the model's `code/`), images or raw
  pixels in, `label`, `probability`, `probabilities` out, for `mlflow.pyfunc.load_model`,
  `mlflow models serve`, `tunetrack serve` and `tunetrack predict`. Its `model_config`
  holds the preprocessing: class names, input shape, `raw_scale`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import ColSpec, DataType, Map, Schema

from tunetrack.models import TunetrackError, image_pixels
from tunetrack.models.errors import first_line

from .. import tags as T
from ..store import quiet_downloads
from . import pyfunc_classifier
from .model_code import tunetrack_classes_by_value, user_code_paths

if TYPE_CHECKING:
    from tunetrack.models import DataConfig

_log = logging.getLogger(__name__)
MODEL_NAME = "model"  # artifact name, as in runs:/<run_id>/model
METADATA_KEY = "tunetrack"  # MLmodel metadata: classes, input_shape, study, trial, ...
FORMAT_TAG = "tunetrack.model_format"
LOADER = Path(pyfunc_classifier.__file__)  # its file name is the pyfunc's loader_module
PIXELS = Path(image_pixels.__file__)  # the training decoder's pixels, which the pyfunc imports
# a white pixel in each built-in dataset's raw scale (what arrays sent to a model are in);
# the user's datasets: the floats their items hold ([0, 1] for uint8 images)
RAW_SCALE = {"digits": 16.0, "imagefolder": 255.0, "torchvision": 255.0, "synthetic": 1.0}
OUTPUT_SCHEMA = Schema([ColSpec(DataType.string, "label"),
                        ColSpec(DataType.double, "probability"),
                        ColSpec(Map(DataType.double), "probabilities")])


def raw_scale(data: DataConfig | None) -> float:
    """`RAW_SCALE` of the dataset of `data` (1 for the user's own datasets)."""
    if data is None or data.class_path:
        return 1.0
    return RAW_SCALE.get(data.name, 1.0)


def _pip_requirements() -> list[str]:
    """Pinned short list: MLflow must not infer requirements (slow, imports everything)."""
    import PIL

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"pillow=={PIL.__version__}"]


def example_images(pixels: np.ndarray) -> Any:
    """The input example: float (N, C, H, W) pixels in [0, 1] as a column of base64 PNGs."""
    import pandas as pd
    from PIL import Image

    encoded = []
    for image in np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8):
        buffer = io.BytesIO()
        Image.fromarray(image[0] if len(image) == 1 else image.transpose(1, 2, 0)).save(
            buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return pd.DataFrame({pyfunc_classifier.IMAGE_COLUMN: encoded})


def _save_network(model: torch.nn.Module, path: Path, example: np.ndarray) -> str:
    """The bare network as an MLflow PyTorch model in `path`: pt2, else pickle."""
    from mlflow.models import infer_signature

    with torch.inference_mode():
        outputs = model(torch.from_numpy(example)).numpy()
    # (-1, C, H, W) float32 -> (-1, K) logits: pt2 traces with it
    common = dict(input_example=example, signature=infer_signature(example, outputs),
                  pip_requirements=[])
    try:
        with warnings.catch_warnings():
            # torch's pt2 archive says so for every weight that shares a storage with
            # another (tied or sliced parameters); the weights are on the CPU, as it wants
            warnings.filterwarnings("ignore", message="No complete tensor found in the group")
            mlflow.pytorch.save_model(model, str(path), serialization_format="pt2", **common)
        return "pt2"
    except Exception as exc:  # torch.export cannot trace every network
        _log.warning("torch.export failed (%s); saving the model with pickle instead",
                     first_line(exc))
    shutil.rmtree(path, ignore_errors=True)
    with tunetrack_classes_by_value(model):
        mlflow.pytorch.save_model(model, str(path), serialization_format="pickle", **common)
    return "pickle"


def _save(model: torch.nn.Module, path: Path, mlflow_model: Model, example: np.ndarray,
          metadata: dict[str, Any], config: dict[str, Any]) -> str:
    """The model folder (see the module's docstring) in `path`; returns the format."""
    with tempfile.TemporaryDirectory(prefix="tunetrack-network-") as tmp:
        network = Path(tmp) / "network"
        fmt = _save_network(model, network, example)
        code = [str(LOADER), str(PIXELS),
                *(user_code_paths(model) if fmt == "pickle" else [])]
        mlflow.pyfunc.save_model(
            str(path), loader_module=LOADER.stem, data_path=str(network / "data"),
            code_paths=code, mlflow_model=mlflow_model,
            signature=ModelSignature(inputs=None, outputs=OUTPUT_SCHEMA),
            input_example=example_images(example), pip_requirements=_pip_requirements(),
            metadata=metadata, model_config=config)
    # the same network file as MLflow's PyTorch flavor, for mlflow.pytorch.load_model
    data = mlflow_model.flavors[mlflow.pyfunc.FLAVOR_NAME]["data"]
    mlflow_model.add_flavor(mlflow.pytorch.FLAVOR_NAME, model_data=data,
                            pytorch_version=str(torch.__version__), code="code")
    mlflow_model.save(str(path / "MLmodel"))
    return fmt


@contextlib.contextmanager
def new_logged_model(client: MlflowClient, *, run_id: str, experiment_id: str, name: str,
                     tags: dict[str, str] | None = None) -> Iterator[tuple[str, Model, Path]]:
    """A LoggedModel `name` of `run_id`, made the way `mlflow.<flavor>.log_model` makes one
    but through `client` (see the module's docstring): the block saves the model folder
    into the yielded path with the yielded `Model` (it carries the new model's ids); then
    the folder is uploaded, linked to the run as an output and the model finalized READY.
    Should anything fail, the model is finalized FAILED, never left half-made and READY."""
    logged = client.create_logged_model(experiment_id=experiment_id, name=name,
                                        source_run_id=run_id, tags=tags)
    try:
        mlflow_model = Model(artifact_path=logged.artifact_location, run_id=run_id,
                             model_uuid=logged.model_id, model_id=logged.model_id)
        with tempfile.TemporaryDirectory(prefix=f"tunetrack-{name}-") as tmp:
            path = Path(tmp) / name
            yield logged.model_id, mlflow_model, path
            client.log_model_artifacts(logged.model_id, str(path))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise


def log_pytorch_model(client: MlflowClient, *, run_id: str, experiment_id: str,
                      model: torch.nn.Module, example: np.ndarray,
                      metadata: dict[str, Any], tags: dict[str, str] | None = None
                      ) -> tuple[str, str]:
    """Log `model` for `run_id`; return (model_id, format). `model` must be a CPU model
    nobody trains any more (`CompletedTrial.collect` made it: an unwrapped, eval-mode copy),
    so it is saved as it is, not copied again. `metadata` holds `classes`, `input_shape`
    and `raw_scale` (the pyfunc's preprocessing) besides what identifies the trial."""
    config = {k: metadata[k] for k in ("classes", "input_shape", "raw_scale")}
    # convolutions run faster on channels-last batches on CPU (oneDNN) and GPU, as the
    # trainer feeds them: the served network is fed so too
    config["channels_last"] = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    with new_logged_model(client, run_id=run_id, experiment_id=experiment_id,
                          name=MODEL_NAME, tags=tags) as (model_id, mlflow_model, path):
        fmt = _save(model.eval(), path, mlflow_model, np.ascontiguousarray(example),
                    {METADATA_KEY: metadata}, config)
    return model_id, fmt


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


@contextlib.contextmanager
def local_model(model_uri: str, client: MlflowClient) -> Iterator[Path]:
    """`model_uri` (models:/NAME@alias, models:/NAME/N, models:/<id>, runs:/<run>/model, or
    any artifact URI / folder) as a local folder, for the time of the `with` block. MLflow
    errors become one-line TunetrackErrors."""
    with tempfile.TemporaryDirectory(prefix="tunetrack-load-") as tmp:
        try:
            location = model_location(client, model_uri)
            with quiet_downloads():
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=location, dst_path=tmp, tracking_uri=client.tracking_uri)
        except (MlflowException, OSError) as exc:
            raise TunetrackError(f"cannot load model {model_uri}: {first_line(exc)}") from None
        yield Path(local)


def load_pytorch_model(model_uri: str, client: MlflowClient) -> tuple[torch.nn.Module, dict]:
    """The bare network of `model_uri` (see `local_model`) on the CPU, and the tunetrack
    metadata stored in its MLmodel file ({} when the model was not logged by tunetrack)."""
    with local_model(model_uri, client) as local:
        try:
            metadata = (Model.load(local).metadata or {}).get(METADATA_KEY, {})
            model = mlflow.pytorch.load_model(str(local), map_location="cpu")
        except (MlflowException, OSError) as exc:
            raise TunetrackError(f"cannot load model {model_uri}: {first_line(exc)}") from None
    if isinstance(model, torch.nn.Module) and not isinstance(model, torch.fx.GraphModule):
        model.eval()  # an exported (pt2) graph is already frozen in eval semantics
    return model, metadata


def check_classifier(local: Path, model_uri: str) -> None:
    """Refuse, in one line, a model whose pyfunc is not `pyfunc_classifier` (one logged
    by tunetrack before models took images, or not by tunetrack)."""
    flavor = Model.load(str(local)).flavors.get(mlflow.pyfunc.FLAVOR_NAME, {})
    if flavor.get("loader_module") != LOADER.stem:
        raise TunetrackError(f"model {model_uri} takes no images (its pyfunc is "
                             f"{flavor.get('loader_module', 'missing')}, not tunetrack's "
                             f"{LOADER.stem}); use a model logged by this tunetrack version")


def load_classifier(model_uri: str, client: MlflowClient) -> Any:
    """The pyfunc of `model_uri` (see `local_model`): images in, labels out, the very model
    `tunetrack serve` and `mlflow models serve` answer with."""
    with local_model(model_uri, client) as local:
        check_classifier(local, model_uri)
        try:
            return mlflow.pyfunc.load_model(str(local))
        except (MlflowException, OSError) as exc:
            raise TunetrackError(f"cannot load model {model_uri}: {first_line(exc)}") from None


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024
                   ) -> torch.Tensor:
    """Logits of `model` on CPU tensor `x`, in batches."""
    if len(x) == 0:
        return torch.empty(0)
    return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
