"""Figures of one trial, drawn with matplotlib's object API on the Agg canvas.

Building a matplotlib figure (Axes, ticks, legends) costs about as much as drawing it, so
each kind of figure is built once per thread and reused: a trial only swaps the data and
the texts, then saves. That halves the cost and keeps memory flat over hundreds of trials
(a few figures per thread, never registered with pyplot). The misclassified grid is one
image mosaic in a single Axes: 25 separate Axes would cost more than everything else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
GRID_COLUMNS = 5
GRID_ROWS = 5  # misclassified grid: up to 25 images, fixed layout so the figure is reused
_cache = threading.local()


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _reused(key: tuple, build: Callable[[], Any]) -> Any:
    """The figure for `key` built on this thread (a small LRU: class lists and image
    shapes differ between studies, rarely within one)."""
    figures = getattr(_cache, "figures", None)
    if figures is None:
        figures = _cache.figures = {}
    if key not in figures:
        if len(figures) >= 6:
            figures.pop(next(iter(figures)))
        figures[key] = build()
    figures[key] = figures.pop(key)  # most recent last
    return figures[key]


def _short(name: str, limit: int = 12) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


class _Confusion:
    """Heatmap of counts (rows = true class), annotated with the counts when it fits."""

    def __init__(self, classes: tuple[str, ...]):
        n = len(classes)
        self.annotate = n <= 30  # beyond that a colour scale replaces the numbers
        side = min(16.0, max(4.5, 0.45 * n + 2.0))
        self.fig = _figure(side + (0.0 if self.annotate else 1.0), side)
        ax = self.fig.add_axes((0.15, 0.12, 0.8, 0.8) if self.annotate
                               else (0.16, 0.14, 0.7, 0.78))
        self.image = ax.imshow(np.zeros((n, n)), cmap="Blues", interpolation="nearest",
                               vmin=0, vmax=1)
        if not self.annotate:
            self.fig.colorbar(self.image, cax=self.fig.add_axes((0.88, 0.14, 0.03, 0.78)))
        if n <= 50:
            labels = [_short(c) for c in classes]
            ax.set_xticks(range(n), labels, rotation=90 if n > 10 else 0, fontsize=8)
            ax.set_yticks(range(n), labels, fontsize=8)
        self.cells = [[ax.text(j, i, "", ha="center", va="center", fontsize=7)
                       for j in range(n)] for i in range(n)] if self.annotate else []
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        # an explicit y skips matplotlib's title placement pass (a tight bbox of the axes)
        self.title = ax.set_title("", y=1.01)

    def draw(self, path: Path, confusion: np.ndarray) -> None:
        top = max(int(confusion.max()), 1) if confusion.size else 1
        self.image.set_data(confusion)
        self.image.set_clim(0, top)
        for (i, j), count in np.ndenumerate(confusion):
            if self.annotate:
                cell = self.cells[i][j]
                cell.set_text(str(count) if count else "")
                cell.set_color("white" if count > top / 2 else "black")
        total = int(confusion.sum())
        accuracy = np.trace(confusion) / total if total else 0.0
        self.title.set_text(f"test confusion matrix (accuracy {accuracy:.4f}, n={total})")
        self.fig.savefig(path, dpi=DPI)


def draw_confusion(path: Path, confusion: np.ndarray, classes: Sequence[str]) -> None:
    key = ("confusion", tuple(classes))
    _reused(key, lambda: _Confusion(tuple(classes))).draw(path, np.asarray(confusion))


class _Curves:
    """Loss and accuracy (train vs val) and the learning rate per epoch."""

    PANELS = (("loss", ("train_loss", "val_loss")),
              ("accuracy", ("train_accuracy", "val_accuracy")), ("learning rate", ("lr",)))

    def __init__(self) -> None:
        self.fig = _figure(12.0, 3.6)
        self.axes, self.lines, self.best = [], {}, []
        for index, (title, keys) in enumerate(self.PANELS):
            ax = self.fig.add_axes((0.05 + index * 0.33, 0.15, 0.27, 0.72))
            for key in keys:
                (self.lines[key],) = ax.plot([], [], markersize=3, label=key)
            self.best.append(ax.axvline(0, color="grey", linestyle="--", linewidth=1,
                                        label="best epoch"))
            ax.set_title(title, y=1.01)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.locator_params(nbins=5)  # tick labels are most of the drawing time
            if len(keys) > 1:
                ax.legend(fontsize=7, loc="lower right" if title == "accuracy" else
                          "upper right")
            self.axes.append(ax)

    def draw(self, path: Path, epochs: Sequence[int], series: dict[str, Sequence[float]],
             best_epoch: int | None) -> None:
        marker = "o" if len(epochs) <= 30 else ""
        for key, line in self.lines.items():
            line.set_data(epochs, series[key])
            line.set_marker(marker)
        for vline in self.best:
            vline.set_visible(best_epoch is not None)
            vline.set_xdata([best_epoch or 0] * 2)
        lrs = [v for v in series["lr"] if v > 0]
        scale = "log" if lrs and max(lrs) / min(lrs) > 20 else "linear"
        if self.axes[2].get_yscale() != scale:
            self.axes[2].set_yscale(scale)
        for ax in self.axes:
            ax.relim(visible_only=True)
            ax.autoscale_view()
        self.fig.savefig(path, dpi=DPI)


def draw_curves(path: Path, epochs: Sequence[int], series: dict[str, Sequence[float]],
                best_epoch: int | None) -> None:
    _reused(("curves",), _Curves).draw(path, epochs, series, best_epoch)


class _Misclassified:
    """Grid of images (C, H, W) in [0, 1] with their true and predicted labels."""

    def __init__(self, shape: tuple[int, int, int]):
        _, height, width = shape
        self.pad, self.label = max(1, height // 8), max(3, height // 3)  # label strip
        self.cell = (height + self.pad + self.label, width + self.pad)
        self.mosaic = np.ones((GRID_ROWS * self.cell[0] + self.pad,
                               GRID_COLUMNS * self.cell[1] + self.pad, 3), dtype=np.float32)
        self.fig = _figure(1.5 * GRID_COLUMNS, 1.6 * GRID_ROWS + 0.4)
        ax = self.fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.4 / (1.6 * GRID_ROWS + 0.4)))
        self.image = ax.imshow(self.mosaic, interpolation="nearest")
        ax.set_axis_off()
        self.texts = []
        for k in range(GRID_ROWS * GRID_COLUMNS):
            r, c = divmod(k, GRID_COLUMNS)
            top, left = r * self.cell[0] + self.pad + self.label, c * self.cell[1] + self.pad
            self.texts.append(ax.text(left + width / 2, top - 0.5, "", ha="center",
                                      va="bottom", fontsize=7, color="darkred"))
        self.title = self.fig.suptitle("", fontsize=9, y=0.995, va="top")

    def draw(self, path: Path, images: np.ndarray, true: Sequence[int], pred: Sequence[int],
             classes: Sequence[str]) -> None:
        n = min(len(images), len(self.texts))
        channels, height, width = images.shape[1:]
        tiles = np.clip(images[:n].transpose(0, 2, 3, 1), 0.0, 1.0)
        tiles = np.repeat(tiles, 3, axis=3) if channels == 1 else tiles[..., :3]
        self.mosaic[:] = 1.0
        for k, text in enumerate(self.texts):
            if k < n:
                r, c = divmod(k, GRID_COLUMNS)
                top = r * self.cell[0] + self.pad + self.label
                left = c * self.cell[1] + self.pad
                self.mosaic[top:top + height, left:left + width] = tiles[k]
                text.set_text(f"{_short(classes[true[k]], 8)} → {_short(classes[pred[k]], 8)}")
            else:
                text.set_text("")
        self.image.set_data(self.mosaic)
        self.title.set_text(f"misclassified test images (true → predicted), {n} shown")
        self.fig.savefig(path, dpi=DPI)


def draw_misclassified(path: Path, images: np.ndarray, true: Sequence[int],
                       pred: Sequence[int], classes: Sequence[str]) -> None:
    """Up to 25 images (N, C, H, W) in [0, 1] with their true and predicted labels."""
    shape = tuple(int(s) for s in images.shape[1:])
    _reused(("misclassified", shape), lambda: _Misclassified(shape)).draw(
        path, images, true, pred, classes)
