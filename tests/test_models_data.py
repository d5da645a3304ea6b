"""Datasets and splits: stratified, disjoint, seeded; imagefolder, torchvision, synthetic."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tunetrack.models import DataConfig, TunetrackError, load_splits


def _rows(*splits) -> Counter:
    """Multiset of (pixels, label) rows over the given splits."""
    out: Counter = Counter()
    for split in splits:
        for x, y in zip(split.x.numpy(), split.y.numpy(), strict=True):
            out[(x.tobytes(), int(y))] += 1
    return out


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataConfig(name="digits", seed=0))


# ---------------------------------------------------------------- splits (digits)


def test_digits_shapes_and_ranges(digits):
    assert digits.input_shape == (1, 8, 8)
    assert digits.n_classes == 10
    assert digits.classes == [str(i) for i in range(10)]
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.min() >= 0 and split.x.max() <= 1
    assert digits.train.x.max() == 1.0  # 16/16: scaled, not raw 0..16
    # mean/std are the train split's own per-channel statistics
    assert digits.mean[0] == pytest.approx(digits.train.x.mean().item(), rel=1e-5)
    assert digits.std[0] == pytest.approx(digits.train.x.std(unbiased=False).item(), rel=1e-4)


def test_splits_cover_the_data_disjointly_with_the_right_sizes(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    n = len(bunch.target)
    assert len(digits.train) + len(digits.val) + len(digits.test) == n == 1797
    assert len(digits.test) == pytest.approx(0.15 * n, abs=10)
    assert len(digits.val) == pytest.approx(0.15 * n, abs=10)
    full = Counter()
    for x, y in zip(bunch.images.astype(np.float32) / 16.0, bunch.target, strict=True):
        full[(x[None].tobytes(), int(y))] += 1
    # same multiset of rows: every sample lands in exactly one split
    assert _rows(digits.train, digits.val, digits.test) == full


def test_splits_are_stratified(digits):
    overall = torch.bincount(torch.cat([digits.train.y, digits.val.y, digits.test.y]),
                             minlength=10).double()
    overall /= overall.sum()
    for split in (digits.train, digits.val, digits.test):
        share = torch.bincount(split.y, minlength=10).double() / len(split)
        # each class is within one sample (plus rounding) of its overall share
        assert (share - overall).abs().max().item() < 1.5 / len(split) + 1e-9


def test_same_seed_same_splits_other_seed_other_splits(digits):
    again = load_splits(DataConfig(name="digits", seed=0))
    other = load_splits(DataConfig(name="digits", seed=1))
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert again.fingerprint == digits.fingerprint
    assert _rows(other.test) != _rows(digits.test)
    assert other.fingerprint != digits.fingerprint
    assert len(digits.fingerprint) == 16 and int(digits.fingerprint, 16) >= 0


def test_fingerprint_is_stable_across_processes(digits):
    code = ("from tunetrack.models import DataConfig, load_splits;"
            "print(load_splits(DataConfig(name='digits', seed=0)).fingerprint)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == digits.fingerprint


def test_fingerprint_follows_content():
    a = load_splits(DataConfig(name="digits", max_samples=400))
    b = load_splits(DataConfig(name="digits", max_samples=401))
    assert a.fingerprint != b.fingerprint
    assert len(a.train) + len(a.val) + len(a.test) == 400


def test_max_samples_subsample_is_stratified():
    s = load_splits(DataConfig(name="digits", max_samples=500))
    counts = torch.bincount(torch.cat([s.train.y, s.val.y, s.test.y]), minlength=10)
    assert counts.min() >= 48 and counts.max() <= 52


@pytest.mark.parametrize(
    ("field", "value"), [("val_fraction", 1.0), ("val_fraction", 0.0), ("test_fraction", -0.1)]
)
def test_bad_fractions_raise(field, value):
    with pytest.raises(TunetrackError, match=field):
        load_splits(DataConfig(name="synthetic", **{field: value}))
    with pytest.raises(TunetrackError, match="< 1"):
        load_splits(DataConfig(name="synthetic", val_fraction=0.5, test_fraction=0.5))


def test_unknown_dataset_lists_allowed_names():
    with pytest.raises(TunetrackError) as info:
        load_splits(DataConfig(name="digitz"))
    msg = str(info.value)
    assert "'digitz'" in msg and "did you mean 'digits'" in msg
    for name in ("digits", "imagefolder", "torchvision", "synthetic"):
        assert name in msg


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_seeded_and_shaped():
    cfg = dict(name="synthetic", n_samples=120, n_classes=3, shape=(2, 5, 6))
    a, b = load_splits(DataConfig(seed=7, **cfg)), load_splits(DataConfig(seed=7, **cfg))
    c = load_splits(DataConfig(seed=8, **cfg))
    assert a.input_shape == (2, 5, 6) and a.n_classes == 3
    assert a.classes == ["class_0", "class_1", "class_2"]
    assert len(a.train) + len(a.val) + len(a.test) == 120
    assert torch.equal(a.train.x, b.train.x) and a.fingerprint == b.fingerprint
    assert not torch.equal(a.train.x, c.train.x) and a.fingerprint != c.fingerprint
    assert a.train.x.min() >= 0 and a.train.x.max() <= 1
    assert torch.bincount(torch.cat([a.train.y, a.val.y, a.test.y])).tolist() == [40, 40, 40]


def test_synthetic_classes_are_separable():
    s = load_splits(DataConfig(name="synthetic", n_samples=400, n_classes=4))
    # nearest class mean (from train) classifies the test split well: the data is learnable
    means = torch.stack([s.train.x[s.train.y == k].mean(0) for k in range(4)])
    dist = ((s.test.x[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert (dist.argmin(1) == s.test.y).float().mean() > 0.9


def test_synthetic_too_small_raises():
    with pytest.raises(TunetrackError, match="n_samples=5"):
        load_splits(DataConfig(name="synthetic", n_samples=5, n_classes=2))


# ---------------------------------------------------------------- imagefolder


def _png(path: Path, size: tuple[int, int], mode: str, color) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """cat: white grayscale images; dog: red RGB images; fox: blue RGB; mixed sizes."""
    root = tmp_path / "pets"
    for i in range(5):
        _png(root / "cat" / f"c{i}.png", (10 + i, 7 + 2 * i), "L", 255)
        _png(root / "dog" / f"d{i}.png", (20, 9 + i), "RGB", (255, 0, 0))
        _png(root / "fox" / "sub" / f"f{i}.png", (6 + i, 6), "RGB", (0, 0, 255))
    return root


def _imagefolder(path, **kw):
    kw = {"val_fraction": 0.2, "test_fraction": 0.2, **kw}
    return load_splits(DataConfig(name="imagefolder", path=str(path), **kw))


def test_imagefolder_loads_resized_rgb(folder):
    s = _imagefolder(folder, image_size=12)
    assert s.classes == ["cat", "dog", "fox"]
    assert s.input_shape == (3, 12, 12)  # one grayscale class does not make it grayscale
    xs = torch.cat([s.train.x, s.val.x, s.test.x])
    ys = torch.cat([s.train.y, s.val.y, s.test.y])
    assert torch.bincount(ys).tolist() == [5, 5, 5]
    colors = {0: (1.0, 1.0, 1.0), 1: (1.0, 0.0, 0.0), 2: (0.0, 0.0, 1.0)}
    for x, y in zip(xs, ys, strict=True):
        expected = torch.tensor(colors[int(y)]).view(3, 1, 1).expand(3, 12, 12)
        assert torch.allclose(x, expected, atol=1e-6)


def test_imagefolder_default_size_is_64(folder):
    assert _imagefolder(folder).input_shape == (3, 64, 64)


def test_imagefolder_all_grayscale_stays_one_channel(tmp_path):
    for i in range(4):
        _png(tmp_path / "a" / f"{i}.png", (9, 9), "L", 0)
        _png(tmp_path / "b" / f"{i}.png", (5, 8), "L", 51)
    s = _imagefolder(tmp_path, image_size=8, val_fraction=0.25, test_fraction=0.25)
    assert s.input_shape == (1, 8, 8)
    xs = torch.cat([s.train.x, s.val.x, s.test.x])
    ys = torch.cat([s.train.y, s.val.y, s.test.y])
    assert torch.allclose(xs[ys == 1], torch.full_like(xs[ys == 1], 0.2), atol=1e-6)
    assert torch.count_nonzero(xs[ys == 0]) == 0


def test_imagefolder_channels_forced(folder):
    gray = _imagefolder(folder, image_size=4, channels=1)
    assert gray.input_shape == (1, 4, 4)
    with pytest.raises(TunetrackError, match=r"dataset.channels must be 1 .* but got 2"):
        _imagefolder(folder, image_size=4, channels=2)


def _assert_one_line_naming(info, *needles: str) -> None:
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_imagefolder_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(TunetrackError) as info:
        _imagefolder(missing)
    _assert_one_line_naming(info, str(missing), "not a folder")


def test_imagefolder_path_required():
    with pytest.raises(TunetrackError, match=r"data\.path is required"):
        load_splits(DataConfig(name="imagefolder"))


def test_imagefolder_single_class(tmp_path):
    for i in range(4):
        _png(tmp_path / "only" / f"{i}.png", (4, 4), "L", 0)
    with pytest.raises(TunetrackError) as info:
        _imagefolder(tmp_path)
    _assert_one_line_naming(info, str(tmp_path), "at least 2 class", "found 1", "only")


def test_imagefolder_empty_class_folder(folder):
    (folder / "emu").mkdir()
    with pytest.raises(TunetrackError) as info:
        _imagefolder(folder)
    _assert_one_line_naming(info, str(folder / "emu"), "holds no images")


def test_imagefolder_non_image_file(folder):
    (folder / "dog" / "notes.txt").write_text("hello")
    with pytest.raises(TunetrackError) as info:
        _imagefolder(folder)
    _assert_one_line_naming(info, str(folder / "dog" / "notes.txt"), "not an image")


@pytest.mark.parametrize("where", ["cat/a_bad.png", "dog/z_bad.png"])
def test_imagefolder_corrupt_png(folder, where):
    # cat/ holds grayscale images: the bad file is met while detecting the colour mode
    bad = folder / where
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(TunetrackError) as info:
        _imagefolder(folder)
    _assert_one_line_naming(info, str(bad), "cannot read image")


def test_imagefolder_corrupt_png_when_all_grayscale(tmp_path):
    for i in range(3):
        _png(tmp_path / "a" / f"{i}.png", (4, 4), "L", 0)
        _png(tmp_path / "b" / f"{i}.png", (4, 4), "L", 9)
    bad = tmp_path / "b" / "9.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(TunetrackError) as info:
        _imagefolder(tmp_path)
    _assert_one_line_naming(info, str(bad))


def test_imagefolder_hidden_files_are_ignored(folder):
    (folder / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / ".git").mkdir()
    s = _imagefolder(folder, image_size=4)
    assert s.classes == ["cat", "dog", "fox"]


# ---------------------------------------------------------------- torchvision


def _idx(path: Path, arr: np.ndarray) -> None:
    """Write `arr` (uint8) in the idx-ubyte format torchvision's MNIST readers parse."""
    magic = 0x0800 | arr.ndim  # 0x08 = unsigned byte, then the number of dimensions
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


@pytest.fixture
def fashion_root(tmp_path: Path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y_train = np.repeat(np.arange(10), 8).astype(np.uint8)  # 80 train, 8 per class
    y_test = np.repeat(np.arange(10), 2).astype(np.uint8)  # 20 test
    x_train = rng.integers(0, 256, (80, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    _idx(raw / "train-images-idx3-ubyte", x_train)
    _idx(raw / "train-labels-idx1-ubyte", y_train)
    _idx(raw / "t10k-images-idx3-ubyte", x_test)
    _idx(raw / "t10k-labels-idx1-ubyte", y_test)
    return tmp_path, (x_train, y_train, x_test, y_test)


def test_torchvision_local_files_load_with_official_test_split(fashion_root):
    root, (x_train, y_train, x_test, y_test) = fashion_root
    s = load_splits(DataConfig(name="torchvision", id="FashionMNIST", root=str(root),
                               val_fraction=0.25))
    assert s.classes[0] == "T-shirt/top" and len(s.classes) == 10
    assert s.input_shape == (1, 28, 28)
    # the official test set is the test split, untouched and in order
    assert torch.equal(s.test.y, torch.from_numpy(y_test.astype(np.int64)))
    assert torch.allclose(s.test.x[:, 0], torch.from_numpy(x_test / 255.0).float())
    # train + val partition the official train set, stratified
    assert len(s.train) == 60 and len(s.val) == 20
    assert torch.bincount(s.val.y, minlength=10).tolist() == [2] * 10
    got = _rows(s.train, s.val)
    want = Counter((x[None].tobytes(), int(y)) for x, y in zip(
        (x_train / 255.0).astype(np.float32), y_train, strict=True))
    assert got == want


def test_torchvision_missing_files(fashion_root):
    root, _ = fashion_root
    (root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(TunetrackError) as info:
        load_splits(DataConfig(name="torchvision", id="FashionMNIST", root=str(root)))
    _assert_one_line_naming(info, "FashionMNIST", str(root), "not found")


def test_torchvision_empty_root_does_not_download(tmp_path):
    with pytest.raises(TunetrackError, match="downloads are disabled"):
        load_splits(DataConfig(name="torchvision", id="MNIST", root=str(tmp_path)))
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "MNIST"])
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_torchvision_unknown_id_and_missing_root(tmp_path):
    with pytest.raises(TunetrackError) as info:
        load_splits(DataConfig(name="torchvision", id="FashionMnist", root=str(tmp_path)))
    _assert_one_line_naming(info, "'FashionMnist'", "FashionMNIST", "CIFAR10", "MNIST")
    with pytest.raises(TunetrackError, match=r"data\.root is required"):
        load_splits(DataConfig(name="torchvision", id="MNIST"))


def test_stratified_split_draws_exactly_what_scikit_learn_draws():
    """`_stratified` replaces `train_test_split(stratify=...)` (whose import cost ~1.8 s
    before the first epoch): same members, same order, same refusals."""
    from sklearn.model_selection import train_test_split

    from tunetrack.models.data import _stratified

    rng = np.random.default_rng(0)
    compared = refused = 0
    for case in range(200):
        n, k = int(rng.integers(20, 400)), int(rng.integers(2, 8))
        y = rng.integers(0, k, 2000) if case % 3 else np.arange(2000) % k
        pool = rng.permutation(2000)[:n] if case % 2 else np.sort(rng.choice(2000, n, False))
        fraction, seed = float(rng.uniform(0.01, 0.6)), int(rng.integers(0, 1000))
        try:
            expected = train_test_split(pool, test_size=fraction, random_state=seed,
                                        stratify=y[pool])
        except ValueError:
            with pytest.raises(TunetrackError, match="cannot make a stratified split"):
                _stratified(pool, y, fraction, seed)
            refused += 1
            continue
        got = _stratified(pool, y, fraction, seed)
        assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True)), case
        compared += 1
    assert compared > 150 and refused > 0


def test_digits_are_read_without_importing_scikit_learn():
    code = ("import sys; from tunetrack.models import DataConfig, load_splits; "
            "s = load_splits(DataConfig(name='digits')); "
            "print(len(s.train) + len(s.val) + len(s.test), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["1797", "False"]
