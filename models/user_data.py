"""The user's own dataset: a callable named by `dataset.class_path` (or a plugin's name)
returning one torch `Dataset`, which tunetrack splits, or a mapping {train, val, test} of
them, used as given.

Items are read once into one float32 array (N, C, H, W), as every built-in dataset is, so
the trainer's resident batches, augmentation and fused trials work unchanged. An item is
`(image, label)`; the image a tensor (C, H, W), a PIL image or an array (H, W) / (H, W, C);
uint8 pixels are scaled to [0, 1], floats kept as they are (the network normalises with the
train split's statistics either way). A PIL image is decoded as an image folder's files,
`predict` and the served model decode theirs (`image_pixels.pixels`, its own size): by its
real range (16-bit and wider), a palette through its colours, transparency over black.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .choices import DATASETS
from .config import DataConfig
from .errors import TunetrackError, unknown
from .image_pixels import is_grey, pixels
from .user_code import UserCodeError, call_user, last_line, plugin_names, plugin_path

SPLIT_NAMES = ("train", "val", "test")
# (x, y, classes, {split: indices} when the user's code fixed the splits, else None)
Loaded = tuple[np.ndarray, np.ndarray, list[str], dict[str, np.ndarray] | None]


def dataset_path(cfg: DataConfig) -> str | None:
    """The import path of the user's dataset callable, or None for a built-in dataset (a
    built-in name wins over a plugin's, as in `load_splits`; and no entry-point scan)."""
    if cfg.class_path or cfg.name not in DATASETS:
        return cfg.class_path or plugin_path("dataset", cfg.name)
    return None


def call_dataset(cfg: DataConfig) -> Any:
    """What the user's callable returns for `dataset.init_args` (not yet checked)."""
    path = dataset_path(cfg)
    where = "dataset.class_path" if cfg.class_path else "dataset.name"
    if path is None:
        raise unknown("dataset", cfg.name, [*DATASETS, *plugin_names("dataset")])
    return call_user(path, where, cfg.init_args, {"seed": cfg.seed})


def check_returned(value: Any, where: str) -> list[str]:
    """Why `value` is neither a Dataset nor a {train, val, test} mapping of them."""
    if isinstance(value, Mapping):
        missing = [k for k in SPLIT_NAMES if k not in value]
        extra = [k for k in value if k not in SPLIT_NAMES]
        if missing or extra:
            return [f"{where}: the mapping it returns must have exactly the keys train, val, "
                    f"test but has {sorted(map(str, value))}"]
        return [p for k in SPLIT_NAMES for p in check_returned(value[k], f"{where} [{k}]")]
    if not (hasattr(value, "__getitem__") and hasattr(value, "__len__")):
        return [f"{where}: returned a {type(value).__name__}, not a torch Dataset (with "
                f"__getitem__ and __len__) or a mapping {{train, val, test}} of them"]
    if len(value) == 0:
        return [f"{where}: returned an empty dataset"]
    return []


def _image(item: Any, where: str, index: int) -> np.ndarray:
    """One image as float32 (C, H, W)."""
    if isinstance(item, torch.Tensor):
        arr = item.detach().cpu().numpy()
        if arr.ndim == 3:
            arr = arr.astype(np.float32) / 255.0 if item.dtype == torch.uint8 else arr
            return np.asarray(arr, dtype=np.float32)
    elif hasattr(item, "getbands"):  # a PIL image
        try:
            return pixels(item, item.size, 1 if is_grey(item) else 3)
        except ValueError as exc:  # `Unmappable` range, or a mode Pillow cannot convert
            raise TunetrackError(f"{where}: item {index}'s image (mode {item.mode}): "
                                 f"{exc}") from None
    else:
        arr = np.asarray(item)  # (H, W) or (H, W, C)
        if arr.ndim == 3:
            arr = arr.transpose(2, 0, 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.dtype == object:
        raise TunetrackError(f"{where}: item {index}'s image has shape {arr.shape}; expected "
                             f"(C, H, W), (H, W) or (H, W, C)")
    return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)


def materialize(ds: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Every item of `ds` as (x (N, C, H, W) float32, y (N,) int64)."""
    tensors = getattr(ds, "tensors", None)  # a TensorDataset: no per-item loop
    if isinstance(tensors, tuple) and len(tensors) == 2:
        items: Any = zip(tensors[0], tensors[1], strict=True)
    else:
        items = (ds[i] for i in range(len(ds)))
    xs, ys = [], []
    try:
        for i, item in enumerate(items):
            if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                raise TunetrackError(f"{where}: item {i} is a {type(item).__name__}; "
                                     f"expected (image, label)")
            xs.append(_image(item[0], where, i))
            ys.append(int(item[1]))
    except TunetrackError:
        raise
    except Exception as exc:
        raise UserCodeError(f"{where}: reading item {len(xs)}: {last_line(exc)}") from exc
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise TunetrackError(f"{where}: images differ in shape ({sorted(shapes)[:3]}); "
                             f"resize them to one size in the dataset")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _classes(datasets: list[Any], y: np.ndarray, where: str) -> list[str]:
    named = getattr(datasets[0], "classes", None)
    n = int(y.max()) + 1
    if y.min() < 0:
        raise TunetrackError(f"{where}: labels must be 0..K-1 but one is {int(y.min())}")
    if named is not None:
        named = [str(c) for c in named]
        if len(named) < n:
            raise TunetrackError(f"{where}: .classes names {len(named)} classes but a label "
                                 f"is {n - 1}")
        return named
    return [str(i) for i in range(n)]


def load_user_dataset(cfg: DataConfig) -> Loaded:
    """Call, check and read the user's dataset."""
    where = f"dataset {dataset_path(cfg)}"
    value = call_dataset(cfg)
    problems = check_returned(value, where)
    if problems:
        raise TunetrackError(problems[0])
    if not isinstance(value, Mapping):
        x, y = materialize(value, where)
        return x, y, _classes([value], y, where), None
    parts = [materialize(value[k], f"{where} [{k}]") for k in SPLIT_NAMES]
    if len({p[0].shape[1:] for p in parts}) > 1:
        raise TunetrackError(f"{where}: train, val and test images differ in shape")
    sizes = np.cumsum([0] + [len(p[1]) for p in parts])
    given = {k: np.arange(sizes[i], sizes[i + 1]) for i, k in enumerate(SPLIT_NAMES)}
    y = np.concatenate([p[1] for p in parts])
    return (np.concatenate([p[0] for p in parts]), y,
            _classes([value[k] for k in SPLIT_NAMES], y, where), given)
