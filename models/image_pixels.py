"""An opened image's pixels as the model takes them: float32 (C, H, W) in [0, 1], by the
image's real range (16-bit, 32-bit and float greyscale by their type's range, transparency
composited over black, colour to one channel by ITU-R 601-2 luma), resized bilinear.

numpy and Pillow only, no tunetrack import: the logged model's pyfunc ships this file in
its `code/` (`tracking.registry.model_io`), so `predict`, `mlflow models serve` and
training decode with the very same function; `models.image_decoding` opens files for it.
"""

from __future__ import annotations

import numpy as np

_GREY_BANDS = {"1", "L", "I", "F"}  # one intensity band; alpha bands aside
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)  # what Pillow's "L" uses


class Unmappable(ValueError):
    """Pixel values no range maps to [0, 1] (float beyond [0, 1], integers beyond 16 bits)."""


def is_grey(img) -> bool:
    return set(img.getbands()) - {"A", "a"} <= _GREY_BANDS


def _has_alpha(img) -> bool:
    return bool({"A", "a"} & set(img.getbands())) or "transparency" in img.info


def _is_wide(img) -> bool:
    """A single band deeper than 8 bits: 16-bit, 32-bit integer or float."""
    return img.mode in ("I", "F") or img.mode.startswith("I;16")


def _wide_grey(img) -> np.ndarray:
    """One 16-bit, 32-bit or float band as float32 in [0, 1] by its type's range."""
    values = np.asarray(img)
    if img.mode.startswith("I;16"):
        return values.astype(np.float32) / 65535.0
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if img.mode == "F":
        if not (low >= 0.0 and high <= 1.0):  # NaN fails both comparisons
            raise Unmappable(f"its float pixels span [{low:g}, {high:g}]; float images "
                             f"must hold values in [0, 1]")
        return values.astype(np.float32)
    if not (low >= 0 and high <= 65535):
        raise Unmappable(f"its 32-bit integer pixels span [{low:g}, {high:g}]; integer "
                         f"images must hold values in 0-65535")
    return values.astype(np.float32) / 65535.0


def _planes(img) -> np.ndarray:
    """The image's colour (1 or 3 planes) as float32 in [0, 1], alpha composited over black."""
    if _is_wide(img):
        return _wide_grey(img)[None]
    with_alpha = img.convert("LA" if is_grey(img) else "RGBA")
    values = np.asarray(with_alpha, dtype=np.float32) / 255.0
    return (values[..., :-1] * values[..., -1:]).transpose(2, 0, 1)


def _resized(planes: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """`planes` mapped to `channels` and resized, bilinear, each plane in float."""
    from PIL import Image

    if channels == 1 and len(planes) == 3:
        planes = np.tensordot(_LUMA, planes, axes=1)[None]
    resized = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32))
                                   .resize(size, Image.BILINEAR)) for p in planes])
    return np.repeat(resized, channels, axis=0) if len(resized) < channels else resized


def _eight_bit(img, size: tuple[int, int], channels: int) -> np.ndarray:
    """Pillow's 8-bit conversion and resize, divided by 255 (the pixels every earlier model
    was trained on); a mode Pillow cannot convert straight to `L` goes through `RGB`."""
    from PIL import Image

    target = "L" if channels == 1 else "RGB"
    try:
        converted = img.convert(target)
    except ValueError:  # e.g. LAB -> L
        converted = img.convert("RGB").convert(target)
    arr = np.asarray(converted.resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def pixels(img, size: tuple[int, int], channels: int) -> np.ndarray:
    """`img` (an opened PIL image) as (channels, height, width) float32 in [0, 1], resized
    to `size` (width, height). Raises `Unmappable`, or `ValueError` for a mode Pillow reads
    but cannot convert."""
    if not _is_wide(img) and not _has_alpha(img):
        return _eight_bit(img, size, channels)
    return _resized(_planes(img), size, channels)
