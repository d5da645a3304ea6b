"""The MLflow pyfunc of every logged tunetrack model: images in, labels and probabilities out.

This file travels inside each model (MLflow `code_paths`; the model's `python_function`
flavor names it as its `loader_module`), so `mlflow.pyfunc.load_model`, `mlflow models
serve`, `tunetrack serve` and `tunetrack predict` all run this code and nothing else. It
imports only what MLflow's own PyTorch flavor needs (mlflow, torch, numpy, pandas),
Pillow, and `image_pixels` (tunetrack's training decoder, shipped beside it in the model's
`code/`), never the tunetrack package: a model keeps working where tunetrack is not
installed.

What the preprocessing needs travels in the flavor's `model_config` (written by
`model_io`): class names, the network's input shape (C, H, W) and `raw_scale`, the value
of a white pixel in the training data's raw scale (16 for digits, 255 for image files).
Encoded images are decoded by the function the `imagefolder` dataset decodes them with for
training (`image_pixels.pixels`: each file by its real range, channels, bilinear resize to
H x W); arrays are taken as they are, in the raw scale, and divided by `raw_scale`. The
network normalises its own input.

Bad input raises `MlflowException(..., BAD_REQUEST)` with one line naming what is wrong:
the scoring server answers HTTP 400 with it, without a stack trace.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Any

import numpy as np
import pandas as pd

if __package__:  # inside tunetrack (predict, tests)
    from tunetrack.models.image_pixels import Unmappable, pixels
else:  # loaded by MLflow from the model's code/, which ships image_pixels.py beside it
    from image_pixels import Unmappable, pixels

IMAGE_COLUMN = "image"
BATCH = 1024  # images per forward pass: bounds the memory of one large request
MAX_PIXELS = 40_000_000  # an encoded image larger than this is refused before decoding


def _bad(message: str, image: int | None = None) -> Exception:
    """HTTP 400 with `message`; `image_index` names the image at fault for local callers."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    exc = MlflowException(message, error_code=BAD_REQUEST)
    exc.image_index = image  # type: ignore[attr-defined]
    return exc


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> ImageClassifier:
    """Called by `mlflow.pyfunc.load_model`: `data_path` is the folder of the network file
    MLflow's PyTorch flavor wrote, `model.pt2` (torch.export) or `model.pth` (cloudpickle,
    its user code on `sys.path` already: the model's `code/`)."""
    import torch

    if not model_config or "classes" not in model_config:
        raise ValueError("this model's python_function flavor has no model_config with its "
                         "classes; it was not saved by tunetrack")
    exported = os.path.join(data_path, "model.pt2")
    if os.path.exists(exported):
        network = torch.export.load(exported).module()
    else:
        from mlflow.pytorch import pickle_module

        network = torch.load(os.path.join(data_path, "model.pth"), map_location="cpu",
                             pickle_module=pickle_module, weights_only=False)
    return ImageClassifier(network, model_config)


class ImageClassifier:
    """The network with its preprocessing in front and softmax + class names behind."""

    def __init__(self, network: Any, config: dict[str, Any]):
        self.network = network
        self.classes = [str(c) for c in config["classes"]]
        self.channels, self.height, self.width = (int(s) for s in config["input_shape"])
        self.raw_scale = float(config.get("raw_scale", 1.0))
        import torch

        # a convolutional network takes its batches channels-last (model_io decides)
        self.memory_format = (torch.channels_last if config.get("channels_last")
                              else torch.contiguous_format)

        if not isinstance(network, torch.fx.GraphModule):
            network.eval()  # a pickled network; an exported (pt2) graph is frozen in eval

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per image: `label`, `probability` (top-1) and `probabilities` (every
        class by name)."""
        probabilities = self.probabilities(self.to_batch(data))
        top = probabilities.argmax(1)
        return pd.DataFrame({
            "label": [self.classes[i] for i in top],
            "probability": probabilities[np.arange(len(top)), top].astype(np.float64),
            "probabilities": [dict(zip(self.classes, row.tolist(), strict=True))
                              for row in probabilities.astype(np.float64)]})

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Softmax of the network's logits for a float32 (N, C, H, W) batch in [0, 1]."""
        import torch

        with torch.inference_mode():
            parts = [self.network(torch.from_numpy(x[i:i + BATCH]).contiguous(
                memory_format=self.memory_format)).float().softmax(1)
                for i in range(0, len(x), BATCH)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, len(self.classes)),
                                                                np.float32)

    def to_batch(self, data: Any) -> np.ndarray:
        """What a caller sent -> the network's input, float32 (N, C, H, W) in [0, 1]."""
        if isinstance(data, dict):  # {"inputs": {"image": [...]}} arrives as a dict
            if IMAGE_COLUMN not in data:
                raise _bad(f"expected a column {IMAGE_COLUMN!r} of encoded images, got "
                           f"fields {sorted(data)[:5]}")
            data = pd.DataFrame({IMAGE_COLUMN: list(np.ravel(data[IMAGE_COLUMN]))})
        if isinstance(data, pd.DataFrame):
            if IMAGE_COLUMN not in data.columns:
                raise _bad(f"expected a column {IMAGE_COLUMN!r} of base64 PNG/JPEG images "
                           f"(or an array of pixels), got columns {list(data.columns)[:5]}")
            return self.decode(data[IMAGE_COLUMN].tolist())
        return self.from_pixels(data)

    def decode(self, images: list[Any]) -> np.ndarray:
        """Encoded images (base64 text or bytes) -> the batch, decoded as in training."""
        from PIL import Image, UnidentifiedImageError

        if not images:
            raise _bad(f"column {IMAGE_COLUMN!r} holds no images")
        out = np.empty((len(images), self.channels, self.height, self.width), np.float32)
        for i, value in enumerate(images):
            raw = _image_bytes(value, i)
            try:
                with Image.open(io.BytesIO(raw)) as img:  # reads the header only
                    if img.width * img.height > MAX_PIXELS:
                        raise Image.DecompressionBombError
                    out[i] = pixels(img, (self.width, self.height), self.channels)
            except Image.DecompressionBombError:
                raise _bad(f"image {i} has more than {MAX_PIXELS} pixels (the "
                           f"decompression-bomb limit of served models)", i) from None
            except Unmappable as exc:
                raise _bad(f"image {i} cannot be mapped: {exc}", i) from None
            except (OSError, SyntaxError, ValueError) as exc:
                why = ("not a format Pillow reads" if isinstance(exc, UnidentifiedImageError)
                       else (str(exc).splitlines() or [type(exc).__name__])[0][:120])
                raise _bad(f"image {i} is not a readable image: {why}", i) from None
        return out

    def from_pixels(self, data: Any) -> np.ndarray:
        """An array (N, H, W), (N, H, W, C) or (N, C, H, W) in the raw scale -> the batch."""
        try:
            x = np.asarray(data)
        except ValueError:  # ragged nested lists
            x = None
        c, h, w = self.channels, self.height, self.width
        shapes = [f"(N, {h}, {w})"] * (c == 1) + [f"(N, {h}, {w}, {c})", f"(N, {c}, {h}, {w})"]
        allowed = ", ".join(shapes[:-1]) + f" or {shapes[-1]}"
        if x is None or x.dtype.kind not in "uif" or x.size == 0:
            got = "" if x is None else f", got dtype {x.dtype} and shape {list(x.shape)}"
            raise _bad(f"inputs must be a non-empty numeric array of shape {allowed}{got}")
        if c == 1 and x.shape[1:] == (h, w):
            x = x[:, None]
        elif x.ndim == 4 and x.shape[1:] == (c, h, w):
            pass
        elif x.ndim == 4 and x.shape[1:] == (h, w, c):
            x = x.transpose(0, 3, 1, 2)
        else:
            raise _bad(f"inputs must have shape {allowed}, got {list(x.shape)}")
        x = np.ascontiguousarray(x, dtype=np.float32) / np.float32(self.raw_scale)
        if not np.isfinite(x).all():
            raise _bad("inputs hold NaN or infinite values")
        return x


def _image_bytes(value: Any, index: int) -> bytes:
    """An encoded image as bytes: given as bytes, or as base64 text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"image {index} is not base64 text", index) from None
    raise _bad(f"image {index} must be base64 text or bytes, got {type(value).__name__}", index)
