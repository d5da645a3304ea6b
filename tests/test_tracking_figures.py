"""Trial figures: no pyplot, constant memory over many trials, sane for many classes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from tunetrack.tracking.pictures import figures

SCRIPT = """
import gc, sys
from pathlib import Path
import numpy as np
from matplotlib.figure import Figure
from tunetrack.tracking.pictures import figures
out = Path(sys.argv[1])
rng = np.random.default_rng(0)
for i in range(10):
    figures.draw_confusion(out / "cm.png", rng.integers(0, 9, (3, 3)), ["a", "b", "c"])
    n = int(rng.integers(1, 25))
    figures.draw_misclassified(out / "mis.png", rng.random((n, 1, 8, 8)), [0] * n, [1] * n,
                               ["a", "b"])
    history = {k: list(rng.random(i + 1)) for k in
               ("train_loss", "val_loss", "train_accuracy", "val_accuracy")}
    history["epoch"] = list(range(i + 1))
    figures.draw_curves(out / "curves.png", history, i // 2)
gc.collect()
alive = sum(isinstance(o, Figure) for o in gc.get_objects())
print("pyplot" if "matplotlib.pyplot" in sys.modules else "no-pyplot", alive)
"""


def decoded(path, size: tuple[int, int]) -> np.ndarray:
    """The PNG's pixels as (H, W, 3) ints, after checking its size in pixels (figure inches
    x DPI) and that it is not blank: more than one colour and real contrast."""
    image = Image.open(path)
    assert image.size == size, path.name
    pixels = np.asarray(image.convert("RGB")).astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1 and pixels.std() > 5, path.name
    return pixels


def tile_pixels(pixels: np.ndarray) -> tuple[int, int]:
    """(grey, colour) pixel counts: mid-grey with R = G = B, and strongly coloured."""
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    grey = (spread == 0) & (pixels[..., 0] > 20) & (pixels[..., 0] < 235)
    return int(grey.sum()), int((spread > 40).sum())


MISCLASSIFIED_SIZE = (750, 840)  # a 5 x 5 grid of 1.5 x 1.6 inch cells, title strip, 100 dpi


def test_figures_use_no_pyplot_and_memory_stays_flat(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["no-pyplot", "3"]  # one reused figure per kind, after 10 "trials"
    for name, size in (("cm.png", (450, 450)), ("mis.png", MISCLASSIFIED_SIZE),
                       ("curves.png", (1000, 380))):
        decoded(tmp_path / name, size)


def test_reused_figures_show_the_new_data(tmp_path):
    classes = ["a", "b"]
    figures.draw_confusion(tmp_path / "one.png", np.array([[5, 0], [0, 5]]), classes)
    figures.draw_confusion(tmp_path / "two.png", np.array([[0, 5], [5, 0]]), classes)
    one = np.asarray(Image.open(tmp_path / "one.png"))
    two = np.asarray(Image.open(tmp_path / "two.png"))
    assert one.shape == two.shape and not np.array_equal(one, two)


def test_figures_for_many_classes_and_colour_images(tmp_path):
    classes = [f"class_with_a_long_name_{i}" for i in range(60)]
    confusion = np.random.default_rng(0).integers(0, 9, size=(60, 60))
    figures.draw_confusion(tmp_path / "cm.png", confusion, classes)
    images = np.random.default_rng(1).random((7, 3, 16, 16), dtype=np.float32)
    figures.draw_misclassified(tmp_path / "mis.png", images, [0] * 7, [1] * 7, classes)
    history = {k: list(np.linspace(1, 0.1, 40)) for k in
               ("train_loss", "val_loss", "train_accuracy", "val_accuracy")}
    history["epoch"] = list(range(40))
    figures.draw_curves(tmp_path / "curves.png", history, None)
    # 60 classes: the matrix grows to its 16 inch cap, plus an inch for the colour scale
    decoded(tmp_path / "cm.png", (1700, 1600))
    decoded(tmp_path / "curves.png", (1000, 380))
    # the seven colour tiles fill about 7 x 105 x 105 pixels of the grid in colour
    _, colour = tile_pixels(decoded(tmp_path / "mis.png", MISCLASSIFIED_SIZE))
    assert colour > 7 * 80 * 80, colour


def test_rgb_tiles_show_grey_for_fewer_than_three_channels():
    images = np.random.default_rng(2).random((2, 2, 4, 4), dtype=np.float32) * 1.5
    tiles = figures.rgb_tiles(images)
    assert tiles.shape == (2, 4, 4, 3)
    for channel in range(3):  # the first channel, clipped to [0, 1], in all three
        assert np.array_equal(tiles[..., channel], np.clip(images[:, 0], 0, 1))
    colour = np.random.default_rng(3).random((1, 4, 4, 4), dtype=np.float32)
    assert np.array_equal(figures.rgb_tiles(colour)[0], colour[0, :3].transpose(1, 2, 0))


def test_misclassified_grid_of_two_channel_images(tmp_path):
    images = np.random.default_rng(4).random((3, 2, 8, 8), dtype=np.float32)
    figures.draw_misclassified(tmp_path / "mis.png", images, [0] * 3, [1] * 3, ["a", "b"])
    grey, colour = tile_pixels(decoded(tmp_path / "mis.png", MISCLASSIFIED_SIZE))
    # three grey tiles of about 100 x 100 pixels; colour only in the dark red labels
    assert grey > 3 * 80 * 80 and colour < 1000, (grey, colour)


def test_warm_up_files_draws_every_file_of_a_completed_trial(tmp_path):
    """The helper draws a made-up trial while the first real one trains (run_contents.py)."""
    from tunetrack.tracking.runs import warm_up_files

    warm_up_files(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"confusion_matrix.png", "confusion_matrix.csv", "classification_report.json",
            "per_class_error.png", "misclassified.png", "curves.png", "lr.png",
            "first_layer.png", "feature_maps.png", "history.csv"} <= names
