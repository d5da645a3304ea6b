"""Classify image files with a logged or registered model (e.g. `models:/NAME@champion`).

The files go, as they are, through the model's own pyfunc (`registry.pyfunc_classifier`):
the code that `tunetrack serve`, `mlflow models serve` and `mlflow.pyfunc.load_model` run,
so the command line and the served model cannot disagree. Class names and preprocessing
travel inside the model; its decoder is the training decoder's twin (same channel
conversion, bilinear resize, [0, 1]: tests/test_serving_model.py checks they agree).
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
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from tunetrack.models.errors import first_line

    from ..registry import load_classifier
    from ..store import open_client

    if top < 1:
        raise TunetrackError(f"top must be >= 1 but got {top}")
    paths = [path] if isinstance(path, str) else list(path)
    # every path checked before the model is loaded; an image named twice is read once
    files = list(dict.fromkeys(f for p in paths for f in _image_files(Path(p).expanduser())))
    # a store is asked only for a model it holds, not for a plain folder or artifact URI
    _, client = open_client(tracking_uri, check=model_uri.startswith(("models:/", "runs:/")))
    model = load_classifier(model_uri, client)
    try:
        rows = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    except MlflowException as exc:
        index = getattr(exc, "image_index", None)
        where = f"cannot read image {files[index]}" if index is not None else "cannot predict"
        raise TunetrackError(f"{where}: {first_line(exc)}") from None
    ranked = [sorted(p.items(), key=lambda kv: -kv[1])[:top] for p in rows["probabilities"]]
    return [(str(file), [(label, float(p)) for label, p in best])
            for file, best in zip(files, ranked, strict=True)]
