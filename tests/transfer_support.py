"""Tiny data and "pretrained" weights for the transfer-learning tests (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ("circle", "square", "stripes")
# every mode and a spread of sizes, so the loader's convert/resize path is exercised
MODES = ("RGB", "L", "RGBA", "P")
SIZES = ((32, 32), (24, 40), (48, 28), (20, 20), (64, 64), (33, 31))


def _pixels(label: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A class-dependent pattern plus noise: learnable, but not trivially by one pixel."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    if label == 0:
        mask = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 3) ** 2
    elif label == 1:
        mask = (abs(xx - w / 2) < w / 4) & (abs(yy - h / 2) < h / 4)
    else:
        mask = (xx // 4) % 2 == 0
    img = np.where(mask[..., None], [220, 60, 60], [40, 40, 160]).astype(np.float64)
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, per_class: int = 12, seed: int = 0) -> Path:
    """`root/<class>/<i>.<ext>` with mixed modes (RGB, L, RGBA, P) and sizes."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = SIZES[(i + label) % len(SIZES)]
            mode = MODES[i % len(MODES)]
            img = Image.fromarray(_pixels(label, size, rng), "RGB")
            img = img.quantize(16) if mode == "P" else img.convert(mode)
            ext = ".jpg" if mode in ("RGB", "L") and i % 3 == 0 else ".png"
            img.save(root / name / f"{i:02d}{ext}")
    return root


def save_weights(path: Path, arch: str = "resnet18", seed: int = 0) -> Path:
    """A random-init torchvision state_dict standing in for pretrained weights.

    BatchNorm running statistics get non-default values, so a test can tell "kept from
    the file" from "reset" or "updated by training".
    """
    from torchvision import models

    torch.manual_seed(seed)
    net = models.get_model(arch, weights=None)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path
