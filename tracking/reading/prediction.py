"""Classify image files with a logged or registered model (e.g. `models:/NAME@champion`).

Class names and the input shape travel inside the model (MLmodel metadata written by
`run_contents.CompletedTrial`), so any copy of the model is self-describing. Images are decoded
by the same function the `imagefolder` dataset uses for training (`models.image_decoding`), so
what the model sees here matches what it was trained on (same range, channels and resize).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunetrack.models import TunetrackError


def _image_files(path: Path) -> list[Path]:
    from tunetrack.models.data import IMAGE_EXTENSIONS

    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise TunetrackError(f"{path} is not an image file (allowed extensions: "
                                 f"{', '.join(IMAGE_EXTENSIONS)})")
        return [path]
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")
                       and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise TunetrackError(f"folder {path} holds no image files")
        return files
    raise TunetrackError(f"{path} does not exist")


def predict(model_uri: str, path: str | Sequence[str], *, top: int = 3,
            tracking_uri: str | None = None) -> list[tuple[str, list[tuple[str, float]]]]:
    """Top-`top` classes with probabilities for each image in the files and folders `path`
    (one or several: the model is loaded once for all of them)."""
    import torch

    from tunetrack.models.image_decoding import decode_images

    from ..registry import load_pytorch_model, predict_logits
    from ..store import open_client

    if top < 1:
        raise TunetrackError(f"top must be >= 1 but got {top}")
    paths = [path] if isinstance(path, str) else list(path)
    # every path checked before the model is loaded; an image named twice is read once
    files = list(dict.fromkeys(f for p in paths for f in _image_files(Path(p).expanduser())))
    # a store is asked only for a model it holds, not for a plain folder or artifact URI
    _, client = open_client(tracking_uri, check=model_uri.startswith(("models:/", "runs:/")))
    model, metadata = load_pytorch_model(model_uri, client)
    classes, shape = metadata.get("classes"), metadata.get("input_shape")
    if not classes or not shape:
        raise TunetrackError(f"model {model_uri} carries no class names / input shape; it was "
                             f"not logged by tunetrack")
    channels, height, width = (int(s) for s in shape)
    if height != width or channels not in (1, 3):
        raise TunetrackError(f"model {model_uri} takes {channels}x{height}x{width} inputs; "
                             f"predict supports square 1- or 3-channel images")
    x = torch.from_numpy(decode_images(files, height, channels))
    probabilities = predict_logits(model, x).softmax(1)
    k = min(top, len(classes))
    values, indices = probabilities.topk(k, dim=1)
    return [(str(file), [(classes[i], float(p)) for p, i in zip(v.tolist(), idx.tolist(),
                                                                 strict=True)])
            for file, v, idx in zip(files, values, indices, strict=True)]
