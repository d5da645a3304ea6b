"""Charts of one trial's numbers and images (curves with the generalisation gap, learning
rate, confusion matrix, per-class error, misclassified images), and the figure machinery
`insight` shares for its pictures of the model's insides. All drawn with matplotlib's
object API on the Agg canvas.

Building a matplotlib figure (Axes, ticks, legends) costs about as much as drawing it, so
each kind of figure is built once per thread and reused: a trial only swaps the data and
the texts, then saves. That halves the cost and keeps memory flat over hundreds of trials
(a few figures per thread, never registered with pyplot). The misclassified grid is one
image mosaic in a single Axes: 25 separate Axes would cost more than everything else.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import pandas as pd

    History = pd.DataFrame | Mapping[str, Sequence[float]]

DPI = 100
GRID_COLUMNS = 5
GRID_ROWS = 5  # misclassified grid: up to 25 images, fixed layout so the figure is reused
MAX_REUSED = 12  # figures kept per thread: ~7 kinds of a trial, a few layouts to spare
_cache = threading.local()


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: not registered with pyplot, so it is freed with its
    last reference instead of living until `plt.close`."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def reused(key: tuple, build: Callable[[], Any]) -> Any:
    """The figure for `key` built on this thread (a small LRU: class lists and image
    shapes differ between studies, rarely within one)."""
    figures = getattr(_cache, "figures", None)
    if figures is None:
        figures = _cache.figures = {}
    if key not in figures:
        if len(figures) >= MAX_REUSED:
            figures.pop(next(iter(figures)))
        figures[key] = build()
    figures[key] = figures.pop(key)  # most recent last
    return figures[key]


def rgb_tiles(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) pixels in [0, 1] -> (N, H, W, 3) for imshow: grey for fewer than 3
    channels (the first one), the first three channels otherwise."""
    tiles = np.clip(images.transpose(0, 2, 3, 1), 0.0, 1.0)
    return np.repeat(tiles[..., :1], 3, axis=3) if tiles.shape[3] < 3 else tiles[..., :3]


def short(name: str, limit: int = 12) -> str:
    """`name` cut to `limit` characters with an ellipsis: tick labels must not overlap."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


class _Confusion:
    """Heatmap of counts (rows = true class), annotated with the counts when it fits."""

    def __init__(self, classes: tuple[str, ...]):
        n = len(classes)
        self.annotate = n <= 30  # beyond that a colour scale replaces the numbers
        side = min(16.0, max(4.5, 0.45 * n + 2.0))
        self.fig = new_figure(side + (0.0 if self.annotate else 1.0), side)
        ax = self.fig.add_axes((0.15, 0.12, 0.8, 0.8) if self.annotate
                               else (0.16, 0.14, 0.7, 0.78))
        self.image = ax.imshow(np.zeros((n, n)), cmap="Blues", interpolation="nearest",
                               vmin=0, vmax=1)
        if not self.annotate:
            self.fig.colorbar(self.image, cax=self.fig.add_axes((0.88, 0.14, 0.03, 0.78)))
        if n <= 50:
            labels = [short(c) for c in classes]
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
    reused(key, lambda: _Confusion(tuple(classes))).draw(path, np.asarray(confusion))


class _Curves:
    """Train vs validation loss and accuracy per epoch. The band between the two curves is
    the generalisation gap (val - train loss, train - val accuracy); a thick segment marks
    it at the best epoch (the weights the trial kept) and the title gives its value, so
    over-fitting shows at a glance. The learning rate has its own figure (`insight`)."""

    PANELS = (("loss", "train_loss", "val_loss", 1.0, "val - train"),
              ("accuracy", "train_accuracy", "val_accuracy", -1.0, "train - val"))
    GAP_COLOUR = "C3"

    def __init__(self) -> None:
        from matplotlib.patches import Patch

        self.fig = new_figure(10.0, 3.8)
        self.panels: list[dict[str, Any]] = []
        self.bands: list[Any] = []
        for index, (title, train, val, sign, gap_text) in enumerate(self.PANELS):
            ax = self.fig.add_axes((0.07 + index * 0.5, 0.13, 0.41, 0.7))
            (train_line,) = ax.plot([], [], markersize=3, label="train", color="C0")
            (val_line,) = ax.plot([], [], markersize=3, label="validation", color="C1")
            (gap_mark,) = ax.plot([], [], color=self.GAP_COLOUR, linewidth=3,
                                  solid_capstyle="butt", label="gap at best epoch")
            best = ax.axvline(0, color="grey", linestyle="--", linewidth=1, label="best epoch")
            band = Patch(facecolor=self.GAP_COLOUR, alpha=0.2, label="generalisation gap")
            ax.legend(handles=[train_line, val_line, band, gap_mark, best], fontsize=7,
                      loc="upper right" if title == "loss" else "lower right")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.locator_params(nbins=5)  # tick labels are most of the drawing time
            self.panels.append({
                "ax": ax, "train": train, "val": val, "sign": sign, "name": title,
                "gap_text": gap_text, "lines": (train_line, val_line), "mark": gap_mark,
                "best": best, "title": ax.set_title("", y=1.01, fontsize=10)})

    def draw(self, path: Path, history: History, best_epoch: int | None) -> None:
        epochs = np.asarray(history["epoch"], dtype=float)
        marker = "o" if len(epochs) <= 30 else ""
        for band in self.bands:
            band.remove()
        self.bands = []
        found = np.flatnonzero(epochs == best_epoch) if best_epoch is not None else []
        at, where = (int(found[0]), "best") if len(found) else (len(epochs) - 1, "last")
        for panel in self.panels:
            ax = panel["ax"]
            train = np.asarray(history[panel["train"]], dtype=float)
            val = np.asarray(history[panel["val"]], dtype=float)
            for line, values in zip(panel["lines"], (train, val), strict=True):
                line.set_data(epochs, values)
                line.set_marker(marker)
            self.bands.append(ax.fill_between(epochs, train, val, color=self.GAP_COLOUR,
                                              alpha=0.2, linewidth=0))
            panel["best"].set_visible(best_epoch is not None)
            panel["best"].set_xdata([best_epoch or 0] * 2)
            title = panel["name"]
            panel["mark"].set_data([], [])  # no history: nothing of the last trial stays
            if at >= 0:
                panel["mark"].set_data([epochs[at]] * 2, [train[at], val[at]])
                gap = panel["sign"] * (val[at] - train[at])
                title += (f"\ngap ({panel['gap_text']}) at {where} epoch {int(epochs[at])}: "
                          f"{gap:+.4f}")
            panel["title"].set_text(title)
            ax.relim(visible_only=True)
            ax.autoscale_view()
        self.fig.savefig(path, dpi=DPI)


def draw_curves(path: Path, history: History, best_epoch: int | None) -> None:
    """Train vs val loss and accuracy with the generalisation gap, from a trial's history
    (a pandas DataFrame of `EpochResult` rows, or a mapping column -> values) with the
    columns epoch, train_loss, val_loss, train_accuracy, val_accuracy."""
    reused(("curves",), _Curves).draw(path, history, best_epoch)


class _Misclassified:
    """Grid of images (C, H, W) in [0, 1] with their true and predicted labels."""

    def __init__(self, shape: tuple[int, int, int]):
        _, height, width = shape
        self.pad, self.label = max(1, height // 8), max(3, height // 3)  # label strip
        self.cell = (height + self.pad + self.label, width + self.pad)
        self.mosaic = np.ones((GRID_ROWS * self.cell[0] + self.pad,
                               GRID_COLUMNS * self.cell[1] + self.pad, 3), dtype=np.float32)
        self.fig = new_figure(1.5 * GRID_COLUMNS, 1.6 * GRID_ROWS + 0.4)
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
        height, width = images.shape[2:]
        tiles = rgb_tiles(images[:n])
        self.mosaic[:] = 1.0
        for k, text in enumerate(self.texts):
            if k < n:
                r, c = divmod(k, GRID_COLUMNS)
                top = r * self.cell[0] + self.pad + self.label
                left = c * self.cell[1] + self.pad
                self.mosaic[top:top + height, left:left + width] = tiles[k]
                text.set_text(f"{short(classes[true[k]], 8)} → {short(classes[pred[k]], 8)}")
            else:
                text.set_text("")
        self.image.set_data(self.mosaic)
        self.title.set_text(f"misclassified test images (true → predicted), {n} shown")
        self.fig.savefig(path, dpi=DPI)


def draw_misclassified(path: Path, images: np.ndarray, true: Sequence[int],
                       pred: Sequence[int], classes: Sequence[str]) -> None:
    """Up to 25 images (N, C, H, W) in [0, 1] with their true and predicted labels."""
    shape = tuple(int(s) for s in images.shape[1:])
    reused(("misclassified", shape), lambda: _Misclassified(shape)).draw(
        path, images, true, pred, classes)


class _PerClassError:
    """Bars of the test error per class, the overall error as a line, support on top."""

    def __init__(self, classes: tuple[str, ...]):
        n = len(classes)
        self.annotate = n <= 30
        self.fig = new_figure(min(16.0, max(6.0, 0.35 * n + 2.0)), 4.0)
        self.ax = self.fig.add_axes((0.08, 0.22 if n > 10 else 0.14, 0.9, 0.66))
        self.bars = self.ax.bar(range(n), np.zeros(n), color="C3")
        self.overall = self.ax.axhline(0, color="black", linestyle="--", linewidth=1,
                                       label="overall error")
        if n <= 50:
            self.ax.set_xticks(range(n), [short(c) for c in classes],
                               rotation=90 if n > 10 else 0, fontsize=8)
        else:
            self.ax.set_xlabel(f"{n} classes")
        self.ax.set_ylabel("error (1 - recall)")
        self.ax.grid(axis="y", alpha=0.3)
        self.ax.legend(fontsize=7, loc="upper right")
        self.counts = [self.ax.text(k, 0, "", ha="center", va="bottom", fontsize=6)
                       for k in range(n)] if self.annotate else []
        self.title = self.ax.set_title("", y=1.01, fontsize=10)

    def draw(self, path: Path, errors: np.ndarray, support: np.ndarray | None) -> None:
        import matplotlib

        top = float(errors.max()) if errors.size else 0.0
        colours = matplotlib.colormaps["Reds"](0.35 + 0.6 * errors / (top or 1.0))
        for bar, error, colour in zip(self.bars, errors, colours, strict=True):
            bar.set_height(error)
            bar.set_color(colour)
        for k, text in enumerate(self.counts):
            text.set_position((k, errors[k]))
            text.set_text("" if support is None else f"n={int(support[k])}")
        if support is not None and support.sum() > 0:
            overall = float((errors * support).sum() / support.sum())
            title = f"test error per class (overall {overall:.4f}, n={int(support.sum())})"
        else:
            overall = float(errors.mean()) if errors.size else 0.0
            title = f"test error per class (mean {overall:.4f})"
        self.overall.set_ydata([overall] * 2)
        self.title.set_text(title)
        self.ax.set_ylim(0, max(top * 1.15, 0.05))
        self.fig.savefig(path, dpi=DPI)


def draw_per_class_error(path: Path, per_class_error: Mapping[str, float],
                         support: Mapping[str, int] | Sequence[int] | np.ndarray | None
                         ) -> None:
    """Bar chart of each class's test error (1 - recall), in the mapping's order; `support`
    (test images per class, by name or in the same order) is written over the bars."""
    classes = tuple(per_class_error)
    errors = np.array([per_class_error[c] for c in classes], dtype=float)
    counts = None
    if support is not None:
        counts = np.array([support[c] for c in classes] if isinstance(support, Mapping)
                          else list(support), dtype=float)
    reused(("per_class_error", classes), lambda: _PerClassError(classes)).draw(
        path, errors, counts)


class _LearningRate:
    """The learning rate in effect at the start of each epoch."""

    def __init__(self) -> None:
        self.fig = new_figure(6.0, 3.4)
        self.ax = self.fig.add_axes((0.14, 0.16, 0.82, 0.72))
        (self.line,) = self.ax.plot([], [], markersize=3, color="C2")
        self.ax.set_xlabel("epoch")
        self.ax.set_ylabel("learning rate")
        self.ax.grid(alpha=0.3)
        self.ax.locator_params(axis="x", nbins=6)
        self.ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useOffset=False)
        self.title = self.ax.set_title("", y=1.01, fontsize=10)

    def draw(self, path: Path, epochs: np.ndarray, lrs: np.ndarray) -> None:
        self.line.set_data(epochs, lrs)
        self.line.set_marker("o" if len(epochs) <= 30 else "")
        positive = lrs[lrs > 0]
        spans_decades = positive.size and positive.max() / positive.min() > 20
        scale = "log" if spans_decades else "linear"
        if self.ax.get_yscale() != scale:
            self.ax.set_yscale(scale)  # resets the tick formatter
            if scale == "linear":  # 1e-3 as "1.0" plus an exponent: short tick labels
                self.ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3),
                                         useOffset=False)
        first, last = (lrs[0], lrs[-1]) if len(lrs) else (math.nan, math.nan)
        span = f"constant {first:.3g}" if first == last and np.all(lrs == first) else (
            f"{first:.3g} → {last:.3g}{', log scale' if scale == 'log' else ''}")
        self.title.set_text(f"learning rate per epoch ({span})")
        self.ax.relim()
        self.ax.autoscale_view()
        self.fig.savefig(path, dpi=DPI)


def draw_lr_curve(path: Path, history: pd.DataFrame | Mapping[str, Sequence[float]]) -> None:
    """Learning rate per epoch from a trial's history (columns epoch, lr); log scale when
    it spans more than a factor 20 (step decay, one-cycle), so both ends stay readable."""
    reused(("lr",), _LearningRate).draw(path, np.asarray(history["epoch"], dtype=float),
                                        np.asarray(history["lr"], dtype=float))
