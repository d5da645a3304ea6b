"""The pyfunc every model carries (`registry.pyfunc_classifier`), without a server: its
decoder is the training decoder's twin, every array layout gives one answer, and bad input
is one line with MLflow's BAD_REQUEST (HTTP 400 when served)."""

from __future__ import annotations

import ast
import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from tunetrack.models.image_decoding import decode_images
from tunetrack.tracking.registry import pyfunc_classifier
from tunetrack.tracking.registry.pyfunc_classifier import ImageClassifier

# what a served model may need: MLflow's PyTorch flavor's own requirements and Pillow
SERVING_IMPORTS = {"__future__", "base64", "binascii", "io", "os", "typing", "numpy", "pandas",
                   "torch", "mlflow", "PIL"}


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    imported = {alias.name for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    return imported | {node.module for node in ast.walk(tree)
                       if isinstance(node, ast.ImportFrom) and node.module}


def test_the_pyfunc_imports_nothing_a_model_does_not_carry():
    """It travels inside each model with the training decoder's `image_pixels` beside it,
    and runs where tunetrack is not installed (the slow test in test_serving.py loads models
    so in a fresh process): tunetrack's copy of `image_pixels` is what it imports only when
    it is imported as part of tunetrack."""
    from tunetrack.models import image_pixels

    shipped = {"image_pixels", "tunetrack.models.image_pixels"}
    imported = _top_level_imports(Path(pyfunc_classifier.__file__))
    assert {name.split(".")[0] for name in imported - shipped} <= SERVING_IMPORTS
    assert imported & shipped == shipped
    decoder = _top_level_imports(Path(image_pixels.__file__))
    assert {name.split(".")[0] for name in decoder} <= SERVING_IMPORTS, decoder


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _classifier(shape: tuple[int, int, int], raw_scale: float = 1.0, classes: int = 3
                ) -> ImageClassifier:
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(shape)),
                                                                       classes))
    return ImageClassifier(network, {"classes": [f"c{i}" for i in range(classes)],
                                     "input_shape": list(shape), "raw_scale": raw_scale})


@pytest.mark.parametrize("channels", [1, 3])
def test_decoded_images_are_what_training_decodes(tmp_path, channels):
    """RGB, grayscale, RGBA and palette files of other sizes, PNG and JPEG: the pyfunc's
    pixels equal `models.data.decode_images` (the imagefolder dataset's) exactly."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (13, 9, 3), dtype=np.uint8),
              rng.integers(0, 256, (5, 17), dtype=np.uint8),
              rng.integers(0, 256, (12, 12, 4), dtype=np.uint8)]
    files = []
    for i, (array, fmt) in enumerate(zip(arrays, ["PNG", "JPEG", "PNG"], strict=True)):
        files.append(tmp_path / f"{i}.{fmt.lower()}")
        files[-1].write_bytes(_png(array, fmt))
    palette = Image.fromarray(arrays[0]).convert("P")
    palette.save(tmp_path / "p.png")
    files.append(tmp_path / "p.png")
    model = _classifier((channels, 11, 11))
    served = model.decode([f.read_bytes() for f in files])
    trained = decode_images(files, 11, channels)
    assert served.shape == trained.shape == (4, channels, 11, 11)
    assert np.array_equal(served, trained)
    # base64 text is the same image as its bytes
    as_text = model.decode([base64.b64encode(f.read_bytes()).decode() for f in files])
    assert np.array_equal(as_text, served)


def test_every_array_layout_and_dtype_gives_one_answer():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 17, (6, 3, 4, 5)).astype(np.uint8)  # digits-like raw scale 0..16
    model = _classifier((3, 4, 5), raw_scale=16.0)
    expected = model.predict(raw)
    assert list(expected.columns) == ["label", "probability", "probabilities"]
    with torch.inference_mode():
        logits = model.network(torch.from_numpy(raw.astype(np.float32) / 16))
    assert expected["label"].tolist() == [f"c{i}" for i in logits.argmax(1).tolist()]
    for row in expected.itertuples():
        assert sum(row.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert row.probability == max(row.probabilities.values())
        assert row.probabilities[row.label] == row.probability
    for other in (raw.transpose(0, 2, 3, 1), raw.astype(np.float64), raw.tolist()):
        got = model.predict(other)
        assert got["label"].tolist() == expected["label"].tolist()
        assert np.allclose(got["probability"], expected["probability"], atol=1e-7)
    gray = _classifier((1, 4, 5), raw_scale=255.0)
    plain = rng.integers(0, 256, (2, 4, 5)).astype(np.uint8)
    assert gray.predict(plain)["probability"].tolist() == gray.predict(
        plain[:, None].astype(np.float32))["probability"].tolist()


@pytest.mark.parametrize(("data", "message"), [
    (pd.DataFrame({"image": ["bm90IGFuIGltYWdl"]}), "image 0 is not a readable image: not a "
                                                    "format Pillow reads"),
    (pd.DataFrame({"image": ["###"]}), "image 0 is not base64 text"),
    (pd.DataFrame({"image": [3]}), "image 0 must be base64 text or bytes, got int"),
    (pd.DataFrame({"image": []}), "column 'image' holds no images"),
    (pd.DataFrame({"pixels": [1]}), "expected a column 'image'"),
    ({"picture": ["x"]}, "expected a column 'image' of encoded images"),
    (np.zeros((2, 5, 4)), "inputs must have shape (N, 4, 5), (N, 4, 5, 1) or (N, 1, 4, 5), "
                          "got [2, 5, 4]"),
    (np.zeros((0, 4, 5)), "inputs must be a non-empty numeric array"),
    (np.array([["a"]]), "got dtype <U1"),
    ([[[1.0] * 5] * 4, [[1.0] * 5] * 3], "inputs must be a non-empty numeric array"),
    (np.full((1, 4, 5), np.nan), "inputs hold NaN or infinite values"),
])
def test_bad_input_is_one_line_bad_request(data, message):
    model = _classifier((1, 4, 5))
    with pytest.raises(MlflowException) as info:
        model.predict(data)
    assert info.value.error_code == "BAD_REQUEST"
    assert message in info.value.message and "\n" not in info.value.message


def test_an_image_too_large_to_decode_is_refused_from_its_header():
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, format="PNG")  # 64 M pixels in ~8 kB
    model = _classifier((1, 4, 5))
    with pytest.raises(MlflowException, match=r"more than 40000000 pixels .the decompression-"):
        model.predict(pd.DataFrame({"image": [buffer.getvalue()]}))
    small = _png(np.zeros((30, 30), np.uint8))
    assert model.predict(pd.DataFrame({"image": [small]}))["label"].size == 1
