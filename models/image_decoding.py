"""Image files -> float32 pixels in [0, 1] with the model's channels, by each file's real range.

One function decodes for training (the `imagefolder` dataset) and for `predict`, so a model
sees the same pixels in both. Every mode Pillow reads is mapped by what its values mean, not
by a blind 8-bit conversion (which turns a 16-bit greyscale PNG of 0-65535 into two levels):

- 8-bit modes (`1`, `L`, `P`, `RGB`, `CMYK`, `YCbCr`, `HSV`, `LAB`, ...) without transparency:
  Pillow's conversion to `L`/`RGB`, resized in 8 bits, divided by 255 (as always).
- 16-bit greyscale (`I;16`, `I;16B`, ...): divided by 65535; 32-bit integer (`I`): the same when
  its values lie in 0-65535 (the 16-bit files Pillow reads as `I`), refused otherwise; float
  (`F`): taken as is when its values lie in [0, 1], refused otherwise.
- Transparency (`LA`, `La`, `PA`, `RGBA`, `RGBa`, `P` or `L`/`RGB` with a transparent colour):
  composited over black (the colour times its alpha), so a transparent pixel is 0 whatever
  colour the file happens to store beneath it.
- Colour to one channel: ITU-R 601-2 luma (Pillow's `L`); one channel to three: repeated.

A file whose width times height exceeds the decompression-bomb limit is refused, naming the
file, before its pixels are read; the limit is Pillow's default (89,478,485 pixels, about
9459x9459) unless `TUNETRACK_MAX_IMAGE_PIXELS` raises or lowers it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import TunetrackError
from .image_pixels import Unmappable, is_grey, pixels

PIXEL_LIMIT_SETTING = "TUNETRACK_MAX_IMAGE_PIXELS"
DEFAULT_PIXEL_LIMIT = 89_478_485  # Pillow's own default, so nothing changes unless asked

# what Pillow raises for unreadable, truncated or corrupt files (UnidentifiedImageError is
# an OSError; some corrupt headers surface as SyntaxError or ValueError)
_PIL_ERRORS = (OSError, SyntaxError, ValueError)


def pixel_limit() -> int:
    """The decompression-bomb limit in pixels, from `TUNETRACK_MAX_IMAGE_PIXELS`."""
    raw = os.environ.get(PIXEL_LIMIT_SETTING, "").strip()
    if not raw:
        return DEFAULT_PIXEL_LIMIT
    try:
        limit = int(raw.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise TunetrackError(f"{PIXEL_LIMIT_SETTING} must be a whole number of pixels >= 1, "
                             f"got {raw!r}")
    return limit


@contextmanager
def _opened(file: Path, limit: int, *, read: bool = True) -> Iterator:
    """`Image.open(file)` with Pillow's decompression-bomb check at `limit` (its warning zone
    included), every failure one `TunetrackError` naming the file; `read=False` reads only
    the header (enough for the mode and the size check)."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                if read:  # some plugins check the size again while reading frames
                    img.load()
                yield img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TunetrackError(
            f"image {file} has more than {limit} pixels (the decompression-bomb limit); if "
            f"the file is trusted, raise it: {PIXEL_LIMIT_SETTING}=<pixels>") from None
    except _PIL_ERRORS as exc:
        raise TunetrackError(f"cannot read image {file}: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def decode_image(file: Path, size: int, channels: int, limit: int | None = None
                 ) -> np.ndarray:
    """One file as a (channels, size, size) float32 array in [0, 1]."""
    with _opened(file, limit or pixel_limit()) as img:
        try:
            return pixels(img, (size, size), channels)
        except Unmappable as exc:
            raise TunetrackError(f"cannot map image {file}: {exc}") from None
        except ValueError as exc:  # a mode Pillow reads but cannot convert
            raise TunetrackError(f"cannot map image {file} (mode {img.mode}) to "
                                 f"{channels} channel(s): {exc}") from None


def decode_images(files: list[Path], size: int, channels: int) -> np.ndarray:
    """Every file decoded by `decode_image` into one (N, channels, size, size) array."""
    limit = pixel_limit()
    out = np.empty((len(files), channels, size, size), dtype=np.float32)
    for i, file in enumerate(files):
        out[i] = decode_image(file, size, channels, limit)
    return out


def common_channels(files: list[Path]) -> int:
    """1 when every image is greyscale (any depth, with or without alpha), 3 otherwise; only
    headers are read."""
    limit = pixel_limit()
    for file in files:
        with _opened(file, limit, read=False) as img:
            if not is_grey(img):
                return 3
    return 1
