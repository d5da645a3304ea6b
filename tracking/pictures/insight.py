"""Pictures of a trained model's insides: what its first layer learned (each hidden unit's
input weights as an image, or the first conv filters) and what its first layers make of a
few test images (feature maps). The charts of a trial's numbers (curves, confusion,
per-class error, learning rate, misclassified images) are in `figures`; `run_contents`
says which files a completed trial gets.

Pure functions of a model and numpy arrays, so they run in whichever process draws a
trial's artifacts (a CPU copy of the model is enough), under `figures`' rules: the object
API on the Agg canvas, one figure per kind and layout reused per thread, and many small
pictures as one RGB mosaic in a single Axes (64 separate Axes would cost seconds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .figures import DPI, new_figure, reused, rgb_tiles

if TYPE_CHECKING:
    from torch import nn

__all__ = ["draw_feature_maps", "draw_first_layer"]

MAX_UNITS = 64  # first-layer tiles shown (an 8x8 grid); more are unreadable
FEATURE_IMAGES = 4  # test images whose feature maps are shown
MAX_CHANNELS = 8  # feature maps per layer and image: the most active ones
FEATURE_LAYERS = 2  # first conv layers (or hidden Linear layers) hooked
MAX_TILE = 64  # px: larger inputs are shown down-sampled, which keeps the mosaic small
# activation modules by class name: torch's, and look-alikes of other libraries
_ACTIVATIONS = ("ReLU", "ReLU6", "GELU", "LeakyReLU", "PReLU", "Tanh", "ELU", "SELU", "CELU",
                "SiLU", "Mish", "Sigmoid", "Hardswish", "Hardtanh", "Softplus")


# --- mosaics -------------------------------------------------------------------------


def _stretch(values: np.ndarray) -> np.ndarray:
    """Each tile (first axis) stretched min to max onto [0, 1] on its own."""
    flat = values.reshape(len(values), -1)
    low, high = flat.min(axis=1), flat.max(axis=1)
    span = high - low
    span[span == 0] = 1.0
    per_tile = (-1,) + (1,) * (values.ndim - 1)
    return (values - low.reshape(per_tile)) / span.reshape(per_tile)


def _colour(values: np.ndarray, cmap: str, *, symmetric: bool) -> np.ndarray:
    """(N, h, w) -> (N, h, w, 3) through `cmap`, each tile scaled on its own: weights
    around 0 (symmetric: white = 0, red > 0, blue < 0), activations min to max."""
    import matplotlib

    if symmetric:
        scale = np.abs(values.reshape(len(values), -1)).max(axis=1)
        scale[scale == 0] = 1.0
        unit = 0.5 + 0.5 * values / scale[:, None, None]
    else:
        unit = _stretch(values)
    return matplotlib.colormaps[cmap](unit)[..., :3]


def _resize(tiles: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of (N, h, w, ...) tiles: every pixel stays a crisp block."""
    rows = np.arange(height) * tiles.shape[1] // height
    cols = np.arange(width) * tiles.shape[2] // width
    return tiles[:, rows][:, :, cols]


def _mosaic(grid: Sequence[Sequence[np.ndarray | None]], pad: int,
            gap: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Rows of equally shaped (h, w, 3) tiles on white, `pad` px apart, and the left edge
    of each column. None stays white: in the first row it is a separator column `gap` px
    wide (default: a tile's width), further down a missing tile."""
    tile = next(t for row in grid for t in row if t is not None)
    height, width = tile.shape[:2]
    columns = max(len(row) for row in grid)
    first = list(grid[0]) + [None] * (columns - len(grid[0]))
    widths = [width if cell is not None or gap is None else gap for cell in first]
    lefts = [pad + sum(widths[:c]) + c * pad for c in range(columns)]
    mosaic = np.ones((len(grid) * (height + pad) + pad, lefts[-1] + widths[-1] + pad, 3),
                     dtype=np.float32)
    for r, row in enumerate(grid):
        for c, cell in enumerate(row):
            if cell is not None:
                top = pad + r * (height + pad)
                mosaic[top:top + height, lefts[c]:lefts[c] + width] = cell
    return mosaic, lefts


class _Mosaic:
    """One RGB mosaic in one Axes, a title and labels at pixel positions; reused for every
    mosaic of the same shape (labels are made on demand and hidden when unused)."""

    def __init__(self, shape: tuple[int, int], top: float):
        """`top`: inches above the image for the title (and column labels)."""
        height, width = shape
        long_side = min(8.0, max(4.0, 0.05 * max(shape)))  # tiny mosaics stay small
        image_w = long_side if width >= height else max(2.5, long_side * width / height)
        image_h = max(1.0, long_side * height / width if width >= height else long_side)
        self.fig = new_figure(max(image_w, 6.0), image_h + top)
        total_h = image_h + top
        self.ax = self.fig.add_axes((0.01, 0.01, 0.98, image_h / total_h - 0.02))
        self.image = self.ax.imshow(np.ones((height, width, 3)), interpolation="nearest")
        self.ax.set_axis_off()
        self.title = self.fig.suptitle("", fontsize=9, y=0.995, va="top")
        self.labels: list[Any] = []

    def draw(self, path: Path, mosaic: np.ndarray, title: str,
             labels: Sequence[tuple[float, float, str]] = ()) -> None:
        self.image.set_data(mosaic)
        self.title.set_text(title)
        while len(self.labels) < len(labels):
            self.labels.append(self.ax.text(0, 0, "", ha="center", va="bottom", fontsize=7,
                                            clip_on=False))
        for k, text in enumerate(self.labels):
            visible = k < len(labels)
            text.set_visible(visible)
            if visible:
                x, y, label = labels[k]
                text.set_position((x, y))
                text.set_text(label)
        self.fig.savefig(path, dpi=DPI)


def _draw_mosaic(path: Path, mosaic: np.ndarray, title: str,
                 labels: Sequence[tuple[float, float, str]] = ()) -> None:
    shape = (int(mosaic.shape[0]), int(mosaic.shape[1]))
    top = 0.9 if labels else 0.5  # two title lines, plus two-line column labels
    reused(("mosaic", shape, top), lambda: _Mosaic(shape, top)).draw(path, mosaic, title,
                                                                       labels)


# --- first layer ---------------------------------------------------------------------


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    """Linear and Conv2d layers in registration order (the forward order of every network
    tunetrack builds, and of torchvision's backbones)."""
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def _describe(layer: nn.Module) -> str:
    from torch import nn

    if isinstance(layer, nn.Linear):
        return f"Linear({layer.in_features} → {layer.out_features})"
    kh, kw = layer.kernel_size
    return f"Conv2d({layer.in_channels} → {layer.out_channels}, {kh}x{kw})"


def _grid(tiles: np.ndarray, columns: int) -> list[list[np.ndarray | None]]:
    rows = math.ceil(len(tiles) / columns)
    cells: list[np.ndarray | None] = list(tiles) + [None] * (rows * columns - len(tiles))
    return [cells[r * columns:(r + 1) * columns] for r in range(rows)]


def draw_first_layer(path: Path, model: nn.Module, input_shape: Sequence[int]) -> bool:
    """The first layer's weights as pictures; False (nothing drawn) when the model has no
    Linear or Conv2d layer, or its first Linear does not read the raw pixels.

    Linear (MLP): each hidden unit's input weights reshaped to the (C, H, W) image, up to
    64 units: the pixel patterns a unit responds to. Conv2d: each filter as a small image,
    in colour when it reads 3 channels, else one tile per (filter, input channel). One-
    channel tiles are red for positive and blue for negative weights; every tile is scaled
    on its own, because the pattern is what tells (a dead or noisy unit, a stroke
    detector), and one shared scale would leave most tiles pale.
    """
    from torch import nn

    layers = _weight_layers(model)
    if not layers:
        return False
    layer = layers[0]
    weight = layer.weight.detach().float().cpu().numpy()
    channels, height, width = (int(s) for s in input_shape)
    if isinstance(layer, nn.Linear):
        if weight.shape[1] != channels * height * width:
            return False
        units = weight[:MAX_UNITS].reshape(-1, channels, height, width)
        what = (f"input weights of {len(units)} of {layer.out_features} hidden units as "
                f"{channels}x{height}x{width} images")
    else:
        units = weight
        what = f"{min(len(units), MAX_UNITS)} of {layer.out_channels} filters"
    if units.shape[1] == 3:
        tiles = _stretch(units[:MAX_UNITS]).transpose(0, 2, 3, 1)  # (N, h, w, 3) images
        columns, colour = 0, "colour, stretched per tile"
    else:
        per_channel = units.reshape(-1, *units.shape[2:])[:MAX_UNITS]
        tiles = _colour(per_channel, "RdBu_r", symmetric=True)
        colour = "red > 0 > blue, scaled per tile"
        columns = units.shape[1] if 1 < units.shape[1] <= 8 else 0  # a row per filter
        if columns:
            what += f", one tile per input channel ({units.shape[1]} per row)"
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    side = max(tiles.shape[1], tiles.shape[2])
    if side < 16:  # tiny kernels: blow up so the pad between tiles stays thin
        scale = math.ceil(16 / side)
        tiles = _resize(tiles, tiles.shape[1] * scale, tiles.shape[2] * scale)
    elif side > MAX_TILE:  # large images: the figure could not show more pixels anyway
        tiles = _resize(tiles, max(1, tiles.shape[1] * MAX_TILE // side),
                        max(1, tiles.shape[2] * MAX_TILE // side))
    mosaic, _ = _mosaic(_grid(tiles, columns), pad=max(1, tiles.shape[1] // 8))
    _draw_mosaic(path, mosaic, f"first layer {_describe(layer)}: {what}\n({colour})")
    return True


# --- feature maps --------------------------------------------------------------------


def _hook_points(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Up to FEATURE_LAYERS (module to hook, label): the first conv layers, or the hidden
    Linear layers (every Linear but the classifier's last). Each is hooked after its
    activation when one follows before the next weight layer: what the next layer sees."""
    from torch import nn

    layers = _weight_layers(model)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    chosen = convs[:FEATURE_LAYERS] if convs else [m for m in layers[:-1]
                                                   if isinstance(m, nn.Linear)][:FEATURE_LAYERS]
    modules = list(model.modules())
    points = []
    for layer in chosen:
        target, after = layer, ""
        for module in modules[modules.index(layer) + 1:]:
            if isinstance(module, nn.Linear | nn.Conv2d):
                break
            if type(module).__name__ in _ACTIVATIONS:
                target, after = module, f" → {type(module).__name__}"
                break
        points.append((target, _describe(layer) + after))
    return points


def _capture(model: nn.Module, images: np.ndarray,
             points: Sequence[tuple[nn.Module, str]]) -> list[tuple[np.ndarray, str]]:
    """(output, label) of each hooked module that ran on `images` (its first call only: a
    module may be reused inside one forward, as torchvision's ReLUs are)."""
    import torch

    captured: dict[int, np.ndarray] = {}

    def hook(index: int):
        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            if index not in captured and isinstance(output, torch.Tensor):
                captured[index] = output.detach().float().cpu().numpy()
        return keep

    handles = [module.register_forward_hook(hook(k)) for k, (module, _) in enumerate(points)]
    training = model.training
    try:
        parameter = next(model.parameters(), None)
        x = torch.as_tensor(images)
        if parameter is not None:
            x = x.to(device=parameter.device, dtype=parameter.dtype)
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return [(captured[k], label) for k, (_, label) in enumerate(points) if k in captured]


def _feature_tiles(output: np.ndarray, height: int, width: int) -> tuple[np.ndarray, str]:
    """(N, tiles, height, width, 3) pictures of one layer's output and what they show.

    Conv maps (N, C, h, w): the MAX_CHANNELS channels most active on these images, each
    map stretched on its own. Linear outputs (N, units): one heat map per image (units
    row by row in a square), on one scale for all images so they compare.
    """
    if output.ndim == 4:
        channels = output.shape[1]
        keep = np.sort(np.argsort(-output.mean(axis=(0, 2, 3)))[:MAX_CHANNELS])
        maps = output[:, keep]
        n, k, h, w = maps.shape
        tiles = _colour(maps.reshape(n * k, h, w), "viridis", symmetric=False)
        tiles = _resize(tiles, height, width).reshape(n, k, height, width, 3)
        return tiles, f"{k} most active of {channels} channels"
    flat = output.reshape(len(output), -1)
    units = flat.shape[1]
    side = math.ceil(math.sqrt(units))
    grid = np.full((len(flat), side * side), np.nan, dtype=np.float32)
    grid[:, :units] = flat
    low, high = np.nanmin(flat), np.nanmax(flat)
    unit = (grid - low) / (high - low if high > low else 1.0)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    tiles = cmap(np.ma.masked_invalid(unit.reshape(-1, side, side)))[..., :3]
    tiles = _resize(tiles, height, width).reshape(len(flat), 1, height, width, 3)
    return tiles, f"{units} units, {side}x{side} heat map"


def draw_feature_maps(path: Path, model: nn.Module, images: np.ndarray) -> bool:
    """Feature maps of the first two conv layers (MLP: the first hidden layers'
    activations as heat maps) for the first FEATURE_IMAGES images (N, C, H, W) in [0, 1];
    one row per image, the input on the left. False when nothing can be hooked."""
    points = _hook_points(model)
    images = np.asarray(images, dtype=np.float32)[:FEATURE_IMAGES]
    if not points or not len(images):
        return False
    outputs = _capture(model, images, points)
    if not outputs:
        return False
    h, w = images.shape[2:]
    heat_side = max((math.ceil(math.sqrt(o[0].size)) for o, _ in outputs if o.ndim != 4),
                    default=0)
    scale = min(MAX_TILE, max(16, h, w, heat_side)) / max(h, w)
    height, width = max(1, round(h * scale)), max(1, round(w * scale))
    inputs = _resize(rgb_tiles(images), height, width)
    layers = [(*_feature_tiles(o, height, width), name) for o, name in outputs]
    grid, pad = [], max(1, height // 8)
    for i, picture in enumerate(inputs):
        row: list[np.ndarray | None] = [picture]
        for tiles, _, _ in layers:
            row += [None, *tiles[i]]
        grid.append(row)
    conv = outputs[0][0].ndim == 4  # else one heat map per layer: wide gaps leave label room
    mosaic, lefts = _mosaic(grid, pad, gap=max(2, width // 3) if conv else 2 * width)
    labels, column = [(lefts[0] + width / 2, -1.0, "input")], 2  # a gap column after each
    for tiles, what, name in layers:
        count = tiles.shape[1]
        centre = (lefts[column] + lefts[column + count - 1] + width) / 2
        labels.append((centre, -1.0, f"{name}\n{what}"))
        column += count + 1
    title = (f"feature maps of {len(images)} test images (rows); conv maps each stretched "
             f"min → max (viridis)" if conv else
             f"hidden activations of {len(images)} test images (rows), one scale per layer")
    _draw_mosaic(path, mosaic, title, labels)
    return True
