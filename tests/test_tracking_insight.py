"""A completed trial's pictures: a valid, non-blank PNG of each kind for every network family
and input shape, nothing for a model without weights to show, and flat memory over many
trials."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from torch import nn

from tunetrack.models import ModelConfig, create
from tunetrack.tracking.pictures import insight
from tunetrack.tracking.runs import CompletedTrial, write_trial_artifacts

CLASSES = [f"class {i}" for i in range(10)]
MODEL_PICTURES = ["feature_maps.png", "first_layer.png"]
CHARTS = ["confusion_matrix.png", "curves.png", "lr.png", "misclassified.png",
          "per_class_error.png"]
TABLES = ["classification_report.json", "confusion_matrix.csv", "history.csv",
          "per_class_error.csv"]


def history(epochs: int = 6) -> pd.DataFrame:
    """A plausible trial: val falls behind train (a gap to shade), step-decayed lr."""
    train = np.linspace(2.0, 0.1, epochs)
    return pd.DataFrame({
        "epoch": range(epochs), "train_loss": train, "val_loss": train + np.linspace(0, 0.3,
                                                                                  epochs),
        "train_accuracy": np.linspace(0.3, 0.99, epochs),
        "val_accuracy": np.linspace(0.3, 0.9, epochs),
        "lr": 0.1 * 0.1 ** (np.arange(epochs) // 2), "epoch_seconds": 0.1})


def assert_picture(path) -> None:
    """A readable PNG that shows something: many distinct colours, not one flat colour."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path.name
    pixels = np.asarray(Image.open(path).convert("RGB"))
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert pixels.std() > 5 and colours > 30, (path.name, colours)


def write_all(folder, model, shape, epochs: int = 6) -> list[str]:
    """Every file of a completed trial with random labels and predictions."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 10, 200), rng.integers(0, 10, 200)
    wrong = np.flatnonzero(y_true != y_pred)[:25]
    images = rng.random((200, *shape), dtype=np.float32)
    done = CompletedTrial(
        model=model, classes=CLASSES, input_shape=shape, data_fingerprint="f",
        y_true=y_true, y_pred=y_pred, images=images[:5], wrong_images=images[wrong],
        wrong_true=y_true[wrong].tolist(), wrong_pred=y_pred[wrong].tolist(),
        history=history(epochs).to_dict("records"), best_epoch=3 if epochs else None,
        stop_reason="max_epochs", values={}, log_model=False)
    return write_trial_artifacts(folder, done)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)], ids=["digits", "rgb32"])
@pytest.mark.parametrize("family", ["mlp", "cnn", "resnet"])
def test_every_figure_for_every_family(tmp_path, family, shape):
    model = create(ModelConfig(family=family, depth=2, width=16), shape, len(CLASSES), seed=0)
    names = write_all(tmp_path, model, shape)
    assert names == sorted(MODEL_PICTURES + CHARTS + TABLES)
    for name in MODEL_PICTURES + CHARTS:
        assert_picture(tmp_path / name)
    assert model.training  # the forward pass for the feature maps put the mode back
    assert not any(m._forward_hooks for m in model.modules())  # and removed its hooks


def test_generic_conv_nets_and_other_channel_counts(tmp_path):
    """Not a tunetrack Classifier (a torchvision-like backbone): the first Conv2d anywhere
    in model.modules() is drawn; 2-channel filters get one tile per input channel."""
    for channels in (3, 2):
        model = nn.Sequential(nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(),
                              nn.Conv2d(6, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, 2))
        images = np.random.default_rng(1).random((3, channels, 20, 20), dtype=np.float32)
        assert insight.draw_first_layer(tmp_path / "first.png", model, (channels, 20, 20))
        assert insight.draw_feature_maps(tmp_path / "maps.png", model, images)
        assert_picture(tmp_path / "first.png")
        assert_picture(tmp_path / "maps.png")


def test_first_layer_shows_each_models_own_weights(tmp_path):
    one, two = (create(ModelConfig(family="mlp", depth=1, width=100), (1, 8, 8), 10, seed=s)
                for s in (0, 1))
    assert insight.draw_first_layer(tmp_path / "one.png", one, (1, 8, 8))
    assert insight.draw_first_layer(tmp_path / "two.png", two, (1, 8, 8))
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("one.png", "two.png"))
    assert a.shape == b.shape and not np.array_equal(a, b)  # reused figure, new data


def test_models_without_a_layer_to_show_draw_nothing(tmp_path):
    empty = nn.Sequential(nn.Flatten(), nn.Identity())
    assert not insight.draw_first_layer(tmp_path / "first.png", empty, (1, 8, 8))
    assert not insight.draw_feature_maps(tmp_path / "maps.png", empty,
                                         np.zeros((2, 1, 8, 8), dtype=np.float32))
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4, 3))
    assert not insight.draw_first_layer(tmp_path / "first.png", pooled, (1, 8, 8))
    assert not list(tmp_path.iterdir())
    assert write_all(tmp_path / "a", empty, (1, 8, 8)) == sorted(CHARTS + TABLES)
    no_epochs = sorted(set(CHARTS + TABLES) - {"curves.png", "lr.png"})
    assert write_all(tmp_path / "b", empty, (1, 8, 8), epochs=0) == no_epochs


SCRIPT = """
import gc, sys
from pathlib import Path
import numpy as np, pandas as pd, torch
from matplotlib.figure import Figure
from tunetrack.models import ModelConfig, create
from tunetrack.tracking.pictures import figures, insight
from tunetrack.tracking.pictures.figures import MAX_REUSED
torch.set_num_threads(1)
out, rng, alive = Path(sys.argv[1]), np.random.default_rng(0), []
classes = [str(i) for i in range(10)]
frame = pd.DataFrame({"epoch": range(5), "train_loss": rng.random(5), "val_loss": rng.random(5),
                      "train_accuracy": rng.random(5), "val_accuracy": rng.random(5),
                      "lr": rng.random(5)})
for i in range(50):
    model = create(ModelConfig(family="mlp", depth=1, width=(4, 9, 16)[i % 3]), (1, 8, 8), 10)
    images = rng.random((4, 1, 8, 8), dtype=np.float32)
    errors = dict(zip(classes, rng.random(10)))
    if i % 10 == 0:  # curves and lr now and then: they have one fixed layout
        figures.draw_curves(out / "curves.png", frame, i % 5)
        figures.draw_lr_curve(out / "lr.png", frame)
    # the figures whose layout follows the model: where reuse could pile up
    insight.draw_first_layer(out / "first.png", model, (1, 8, 8))
    insight.draw_feature_maps(out / "maps.png", model, images)
    figures.draw_per_class_error(out / "errors.png", errors, [20] * 10)
    if i in (9, 49):
        gc.collect()
        alive.append(sum(isinstance(o, Figure) for o in gc.get_objects()))
pyplot = "matplotlib.pyplot" in sys.modules
import matplotlib.pyplot as plt
print(pyplot, len(plt.get_fignums()), alive[0], alive[1], MAX_REUSED)
"""


def test_memory_stays_flat_over_50_trials(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, check=True, timeout=300).stdout.split()
    pyplot, open_figures, after_10, after_50, limit = out
    assert pyplot == "False" and open_figures == "0"  # never registered with pyplot
    assert after_10 == after_50 and int(after_50) <= int(limit)  # reused, not piling up
