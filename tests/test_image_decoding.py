"""Every image mode Pillow reads decoded by its real range, for training and for `predict`;
what cannot be mapped, and decompression bombs, refused in one line naming the file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunetrack.models import DataConfig, TunetrackError, load_splits
from tunetrack.models.image_decoding import decode_image

GRADIENT_16 = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16  # 0 .. 65520


def _save(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _bomb_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (its pixel data is never reached): what a
    decompression bomb looks like to a reader, without the memory to build one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def _one_line(info: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def test_a_16_bit_greyscale_png_keeps_its_levels(tmp_path):
    path = _save(tmp_path / "g16.png", Image.fromarray(GRADIENT_16))
    with Image.open(path) as img:
        assert img.mode == "I;16"  # what Pillow reads back: the case being tested
    x = decode_image(path, 64, 1)
    assert x.shape == (1, 64, 64) and x.dtype == np.float32
    assert len(np.unique(x)) == 64 * 64  # before: two levels (0 and 1)
    np.testing.assert_allclose(x[0], GRADIENT_16 / 65535.0, atol=1e-6)
    rgb = decode_image(path, 64, 3)  # a colour model sees the same grey in three planes
    np.testing.assert_allclose(rgb, np.repeat(x, 3, axis=0), atol=1e-6)


def test_an_imagefolder_of_16_bit_pngs_trains_on_their_full_range(tmp_path):
    rng = np.random.default_rng(0)
    for label, (low, high) in {"dark": (0, 30000), "bright": (35000, 65535)}.items():
        for i in range(5):
            pixels = rng.integers(low, high, size=(8, 8)).astype(np.uint16)
            _save(tmp_path / label / f"{i}.png", Image.fromarray(pixels))
    splits = load_splits(DataConfig(name="imagefolder", path=str(tmp_path), image_size=8,
                                    val_fraction=0.2, test_fraction=0.2))
    assert splits.input_shape == (1, 8, 8)  # 16-bit greyscale is greyscale
    bright = splits.classes.index("bright")
    x, y = splits.train.x, splits.train.y
    assert float(x[y == bright].min()) >= 35000 / 65535 - 1e-6
    assert float(x[y != bright].max()) <= 30000 / 65535 + 1e-6
    assert len(np.unique(x.numpy())) > 100  # before: 1.0 nearly everywhere


def test_32_bit_integer_and_float_images_map_by_their_range(tmp_path):
    values = GRADIENT_16.astype(np.int32)
    as_int = _save(tmp_path / "i32.tif", Image.fromarray(values))
    np.testing.assert_allclose(decode_image(as_int, 64, 1)[0], values / 65535.0, atol=1e-6)
    unit = (GRADIENT_16 / 65535.0).astype(np.float32)
    as_float = _save(tmp_path / "f.tif", Image.fromarray(unit))
    np.testing.assert_allclose(decode_image(as_float, 64, 1)[0], unit, atol=1e-6)


@pytest.mark.parametrize(("pixels", "mode", "needle"), [
    (np.full((4, 4), 200.0, dtype=np.float32), "F", "float pixels span [200, 200]"),
    (np.full((4, 4), -5, dtype=np.int32), "I", "integer pixels span [-5, -5]"),
    (np.full((4, 4), 70000, dtype=np.int32), "I", "must hold values in 0-65535"),
])
def test_pixels_outside_a_mappable_range_are_one_line_naming_the_file(tmp_path, pixels, mode,
                                                                     needle):
    path = _save(tmp_path / "cls" / "odd.tif", Image.fromarray(pixels))
    with pytest.raises(TunetrackError) as info:
        decode_image(path, 4, 1)
    _one_line(info, str(path), needle)


def test_transparency_is_composited_over_black(tmp_path):
    # P with a transparent palette entry: index 0 (red, transparent), index 1 (green)
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putdata([0, 1])
    palette.info["transparency"] = 0
    p = _save(tmp_path / "p.png", palette)
    with Image.open(p) as img:
        assert img.mode == "P" and img.info.get("transparency") == 0
    np.testing.assert_allclose(decode_image(p, 2, 3)[:, 0, :], [[0, 0], [0, 1], [0, 0]])

    la = Image.merge("LA", [Image.new("L", (2, 2), 200), Image.new("L", (2, 2), 51)])
    grey = decode_image(_save(tmp_path / "la.png", la), 2, 1)
    np.testing.assert_allclose(grey, np.full((1, 2, 2), 200 / 255 * 51 / 255), atol=1e-6)

    rgba = Image.new("RGBA", (2, 2), (255, 255, 255, 0))  # white, fully transparent
    assert decode_image(_save(tmp_path / "rgba.png", rgba), 2, 3).max() == 0.0


def test_cmyk_and_palette_images_decode_as_pillow_converts_them(tmp_path):
    cmyk = _save(tmp_path / "c.jpg", Image.new("CMYK", (4, 4), (0, 255, 255, 0)))  # red
    red = decode_image(cmyk, 4, 3)
    assert red[0].min() > 0.9 and red[1:].max() < 0.1
    luma = decode_image(cmyk, 4, 1)  # ITU-R 601-2, as Pillow's "L"
    np.testing.assert_allclose(luma, 0.299 * red[0:1] + 0.587 * red[1:2] + 0.114 * red[2:3],
                               atol=2 / 255)


def _greyscale_folder(tmp_path: Path) -> Path:
    for label in ("a", "b"):
        for i in range(3):
            _save(tmp_path / "data" / label / f"{i}.png", Image.new("L", (4, 4), 40 * i))
    return tmp_path / "data"


@pytest.mark.parametrize("during", ["channel detection", "decoding"])
def test_a_decompression_bomb_in_a_class_folder_is_one_line_naming_the_file(tmp_path, during):
    bomb = _bomb_png(tmp_path / "data" / "b" / "huge.png", 20000, 20000)
    root = _greyscale_folder(tmp_path)
    channels = 1 if during == "decoding" else None  # a fixed channel count skips detection
    with pytest.raises(TunetrackError) as info:
        load_splits(DataConfig(name="imagefolder", path=str(root), image_size=4,
                               channels=channels))
    _one_line(info, str(bomb), "decompression-bomb limit", "TUNETRACK_MAX_IMAGE_PIXELS")


def test_the_pixel_limit_setting_lowers_and_raises_the_bomb_limit(tmp_path, monkeypatch):
    path = _save(tmp_path / "twelve.png", Image.new("L", (12, 12), 128))  # 144 pixels
    for limit in ("100", "50"):  # Pillow's warning zone (up to 2x) and beyond it
        monkeypatch.setenv("TUNETRACK_MAX_IMAGE_PIXELS", limit)
        with pytest.raises(TunetrackError) as info:
            decode_image(path, 4, 1)
        _one_line(info, str(path), f"more than {limit} pixels")
    monkeypatch.setenv("TUNETRACK_MAX_IMAGE_PIXELS", "144")
    assert decode_image(path, 4, 1) == pytest.approx(np.full((1, 4, 4), 128 / 255))
    monkeypatch.setenv("TUNETRACK_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(TunetrackError) as info:
        decode_image(path, 4, 1)
    _one_line(info, "TUNETRACK_MAX_IMAGE_PIXELS must be a whole number", "'lots'")


def _brightness_model(tmp_path: Path) -> Path:
    """A model folder as tunetrack logs one (MLmodel metadata: classes, input shape) whose
    "bright" logit is the sum of its 16 pixels minus 8: it reads the pixels' real range."""
    import torch
    from mlflow.models import Model

    from tunetrack.tracking.registry import model_io

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.stack([torch.zeros(16), torch.ones(16)]))
        net[1].bias.copy_(torch.tensor([0.0, -8.0]))
    folder = tmp_path / "model"
    config = {"classes": ["dark", "bright"], "input_shape": [1, 4, 4], "raw_scale": 1.0}
    model_io._save(net.eval(), folder, Model(), np.zeros((1, 1, 4, 4), np.float32),
                   {model_io.METADATA_KEY: config}, config)
    return folder


def test_predict_decodes_16_bit_images_and_refuses_a_bomb_in_one_line(tmp_path):
    from tunetrack.tracking.reading.prediction import predict

    folder = _brightness_model(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    quarter = _save(tmp_path / "in" / "quarter.png",  # 16384 / 65535: a quarter of full scale
                    Image.fromarray(np.full((4, 4), 16384, dtype=np.uint16)))
    [(name, top)] = predict(str(folder), str(quarter), top=2, tracking_uri=uri)
    assert name == str(quarter)
    # logit bright = 16 * 0.25 - 8 = -4 (before: every pixel 1.0, so +8 and "bright")
    assert top[0][0] == "dark"
    assert dict(top)["bright"] == pytest.approx(1 / (1 + np.exp(4)), rel=1e-3)
    bomb = _bomb_png(tmp_path / "in" / "huge.png", 20000, 20000)
    with pytest.raises(TunetrackError) as info:
        predict(str(folder), str(tmp_path / "in"), tracking_uri=uri)
    _one_line(info, str(bomb), "decompression-bomb limit")
