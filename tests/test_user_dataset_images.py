"""A user Dataset's PIL images are decoded as an image folder's files are: by their real
range, a palette through its colours, transparency over black (`image_pixels.pixels`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tunetrack.models.errors import TunetrackError
from tunetrack.models.image_pixels import pixels
from tunetrack.models.user_data import materialize

WHERE = "dataset acme.data:images"


def _one(image: Image.Image) -> np.ndarray:
    x, y = materialize([(image, 1)], WHERE)
    assert x.dtype == np.float32 and y.tolist() == [1]
    return x[0]


def test_a_palette_image_is_its_colours_not_its_indices():
    image = Image.new("P", (4, 3))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 1 is pure red
    image.putpixel((0, 0), 1)
    x = _one(image)
    assert x.shape == (3, 3, 4)
    np.testing.assert_allclose(x[:, 0, 0], [1.0, 0.0, 0.0])
    assert x[:, 1:, :].max() == 0.0  # index 0: black (the index itself would read 0 too,
    assert x[0, 0, 0] == 1.0         # but index 1 would read 1/255, not a full red)


def test_sixteen_bit_images_keep_their_range():
    values = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    x = _one(image)
    assert x.shape == (1, 2, 2)
    np.testing.assert_allclose(x[0], values / 65535.0, atol=1e-6)


def test_transparency_is_composited_over_black():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[0, 0, 3], rgba[1, 1, 3] = 255, 0  # opaque, fully transparent
    rgba[0, 1, 3] = rgba[1, 0, 3] = 128
    x = _one(Image.fromarray(rgba, mode="RGBA"))
    assert x.shape == (3, 2, 2)
    np.testing.assert_allclose(x[:, 0, 0], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(x[:, 1, 1], 0.0)
    np.testing.assert_allclose(x[:, 0, 1], 200 / 255 * 128 / 255, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_eight_bit_images_match_the_image_folder_decoding(mode):
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (5, 6), dtype=np.uint8), mode="L")
    image = grey if mode == "L" else grey.convert(mode)
    channels = 1 if mode == "L" else 3
    np.testing.assert_array_equal(_one(image), pixels(image, image.size, channels))


def test_pixels_no_range_maps_are_refused_naming_the_item():
    bad = Image.fromarray(np.array([[0.0, 2.5]], dtype=np.float32), mode="F")
    with pytest.raises(TunetrackError, match=r"^dataset acme.data:images: item 0's image "
                                             r"\(mode F\): its float pixels span \[0, 2.5\]"):
        materialize([(bad, 0)], WHERE)
