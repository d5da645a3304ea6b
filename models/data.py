"""Datasets -> stratified, seeded train/val/test splits held as tensors.

Images are kept as float32 pixels in [0, 1] with shape (N, C, H, W); the per-channel
mean/std are computed on the train split only and travel with the splits, so the network
normalises its own input (see `nets.Normalize`) and a saved model takes raw pixels.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .choices import DATASETS
from .config import SEEDS, DataConfig
from .errors import TunetrackError, unknown
from .image_decoding import common_channels, decode_images
from .user_data import load_user_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: list[float]  # per channel, train split only
    std: list[float]
    fingerprint: str  # content hash of all three splits: same data, same fingerprint

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def _load_digits(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 8x8 digits, read from the file it ships (what `load_digits` reads)
    without importing scikit-learn: that import alone takes ~1.8 s, before the first epoch."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise TunetrackError("dataset digits needs scikit-learn: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / (
        "digits.csv.gz")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        data = np.loadtxt(handle, delimiter=",")
    x = (data[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0)[:, None, :, :]
    return x, data[:, -1].astype(np.int64), [str(c) for c in range(10)]


def _load_synthetic(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Class-dependent blobs plus noise: learnable, seeded, any shape."""
    if cfg.n_classes < 2 or cfg.n_samples < cfg.n_classes * 3:
        raise TunetrackError(
            f"synthetic dataset needs n_classes >= 2 and n_samples >= 3 * n_classes, got "
            f"n_classes={cfg.n_classes}, n_samples={cfg.n_samples}"
        )
    rng = np.random.default_rng(cfg.seed)
    prototypes = rng.random((cfg.n_classes, *cfg.shape), dtype=np.float32)
    y = np.arange(cfg.n_samples) % cfg.n_classes
    rng.shuffle(y)
    noise = rng.normal(0.0, 0.35, size=(cfg.n_samples, *cfg.shape)).astype(np.float32)
    x = np.clip(prototypes[y] + noise, 0.0, 1.0)
    return x, y.astype(np.int64), [f"class_{i}" for i in range(cfg.n_classes)]


def _scan_imagefolder(path: Path) -> tuple[list[Path], list[int], list[str]]:
    if not path.is_dir():
        raise TunetrackError(f"imagefolder: data.path {str(path)!r} is not a folder")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise TunetrackError(
            f"imagefolder: {path} must hold at least 2 class sub-folders, found {len(classes)}"
            f"{': ' + classes[0] if classes else ''}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(f for f in (path / name).rglob("*") if f.is_file()
                       and not f.name.startswith("."))
        bad = [f for f in found if f.suffix.lower() not in IMAGE_EXTENSIONS]
        if bad:
            raise TunetrackError(
                f"imagefolder: {bad[0]} is not an image file (allowed extensions: "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        if not found:
            raise TunetrackError(f"imagefolder: class folder {path / name} holds no images")
        files += found
        labels += [label] * len(found)
    return files, labels, classes


def _load_imagefolder(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if not cfg.path:
        raise TunetrackError("imagefolder: data.path is required (a folder of class sub-folders)")
    files, labels, classes = _scan_imagefolder(Path(cfg.path).expanduser())
    x = decode_images(files, cfg.image_size or 64, cfg.channels or common_channels(files))
    return x, np.asarray(labels, dtype=np.int64), classes


def _torchvision_arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    """Use the dataset's in-memory arrays when it has them (MNIST family, CIFAR)."""
    data = getattr(ds, "data", None)
    targets = getattr(ds, "targets", None)
    if data is not None and targets is not None:
        arr = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        arr = arr.astype(np.float32) / 255.0
        arr = arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)
        return arr, np.asarray(targets, dtype=np.int64)
    from torchvision.transforms.functional import pil_to_tensor

    xs, ys = zip(*((pil_to_tensor(img).float() / 255.0, int(t)) for img, t in ds), strict=True)
    return torch.stack(xs).numpy(), np.asarray(ys, dtype=np.int64)


def _load_torchvision(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Train + official test set; returns the size of the train part as the last value."""
    import torchvision.datasets as tvd

    allowed = ["MNIST", "FashionMNIST", "KMNIST", "QMNIST", "CIFAR10", "CIFAR100", "SVHN",
               "STL10"]
    if cfg.id not in allowed:
        raise unknown("torchvision dataset id", cfg.id, allowed)
    if not cfg.root:
        raise TunetrackError("torchvision: data.root is required (a local folder; no downloads)")
    root = str(Path(cfg.root).expanduser())
    kind = getattr(tvd, cfg.id)
    parts = []
    for train in (True, False):
        split_kw = {"split": "train" if train else "test"} if cfg.id in ("SVHN", "STL10") else (
            {"train": train})
        try:
            parts.append(kind(root, download=False, **split_kw))
        except (RuntimeError, FileNotFoundError) as exc:
            raise TunetrackError(
                f"torchvision: {cfg.id} not found under {root} ({exc}); downloads are disabled, "
                f"copy the dataset files there in torchvision's layout"
            ) from None
    (x_tr, y_tr), (x_te, y_te) = (_torchvision_arrays(p) for p in parts)
    classes = [str(c) for c in getattr(parts[0], "classes", sorted(set(y_tr.tolist())))]
    return np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te]), classes, len(y_tr)


LOADERS: dict[str, Callable[[DataConfig], tuple[np.ndarray, np.ndarray, list[str]]]] = {
    "digits": _load_digits,
    "imagefolder": _load_imagefolder,
    "synthetic": _load_synthetic,
}


def _stratified(indices: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """`sklearn.model_selection.train_test_split(indices, test_size=fraction,
    random_state=seed, stratify=y[indices])`, the same draws in the same order (checked
    against scikit-learn in tests/test_models_data.py), without importing scikit-learn."""
    labels = y[indices]
    n_test = math.ceil(fraction * len(labels))
    n_train = len(labels) - n_test
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    problem = None
    if n_train <= 0:
        problem = f"the train part would be empty (test part {n_test} of {len(labels)})"
    elif counts.min() < 2:
        problem = f"classes {classes[counts < 2].tolist()} have fewer than 2 samples"
    elif min(n_train, n_test) < len(classes):
        problem = (f"each part needs one sample of each of the {len(classes)} classes "
                   f"(train {n_train}, test {n_test})")
    if problem:
        raise TunetrackError(f"cannot make a stratified split of {len(indices)} samples "
                             f"with fraction {fraction}: {problem}")
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for members, n, t in zip(by_class, n_i, t_i, strict=True):
        shuffled = members.take(rng.permutation(len(members)), mode="clip")
        train.extend(shuffled[:n])
        test.extend(shuffled[n:n + t])
    return indices[rng.permutation(train)], indices[rng.permutation(test)]


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState
                      ) -> np.ndarray:
    """Samples per class when drawing `draws` of them, ties broken by `rng`
    (scikit-learn's `utils.extmath._approximate_mode`)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), need)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for arr in arrays:
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def load_splits(cfg: DataConfig) -> Splits:
    """Load the dataset named by `cfg` and split it, stratified, by `cfg.seed`."""
    cfg.check()
    official_test: np.ndarray | None = None
    given: dict[str, np.ndarray] | None = None
    if cfg.class_path or cfg.name not in DATASETS:  # the user's own, or a plugin's
        x, y, classes, given = load_user_dataset(cfg)
        pool = np.arange(len(y))
    elif cfg.name == "torchvision":
        x, y, classes, n_train = _load_torchvision(cfg)
        official_test = np.arange(n_train, len(y))
        pool = np.arange(n_train)
    else:
        x, y, classes = LOADERS[cfg.name](cfg)
        pool = np.arange(len(y))
    if given is not None:  # the user's code fixed the three splits
        return _splits(x, y, classes, given["train"], given["val"], given["test"])
    if cfg.max_samples is not None and cfg.max_samples < len(pool):
        pool, _ = _stratified(pool, y, 1 - cfg.max_samples / len(pool), cfg.seed)
        if official_test is not None:
            keep = max(1, int(len(official_test) * cfg.max_samples / n_train))
            official_test = official_test[:keep]
    if official_test is None:
        pool, test_idx = _stratified(pool, y, cfg.test_fraction, cfg.seed)
    else:
        test_idx = official_test
    val_share = cfg.val_fraction / (1 - (0 if official_test is not None else cfg.test_fraction))
    train_idx, val_idx = _stratified(pool, y, val_share, (cfg.seed + 1) % SEEDS)
    return _splits(x, y, classes, *(np.sort(i) for i in (train_idx, val_idx, test_idx)))


def _splits(x: np.ndarray, y: np.ndarray, classes: list[str], train_idx: np.ndarray,
            val_idx: np.ndarray, test_idx: np.ndarray) -> Splits:
    """The three splits as tensors, with the train split's statistics and the fingerprint."""
    x_train = x[train_idx]
    mean = x_train.mean(axis=(0, 2, 3))
    std = x_train.std(axis=(0, 2, 3)) + 1e-6

    def split(idx: np.ndarray) -> Split:
        return Split(torch.from_numpy(np.ascontiguousarray(x[idx])), torch.from_numpy(y[idx]))

    return Splits(
        train=split(train_idx), val=split(val_idx), test=split(test_idx), classes=classes,
        mean=[float(m) for m in mean], std=[float(s) for s in std],
        fingerprint=_fingerprint(x[train_idx], y[train_idx], y[val_idx], y[test_idx],
                                 x[val_idx], x[test_idx]),
    )
