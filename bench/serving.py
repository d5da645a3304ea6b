"""Serving numbers: a classifier behind the real `tunetrack serve`, against the bare torch
network called in-process.

`--network mlp` (default): a small MLP trained on digits (a few epochs); `--network cnn`:
a tunetrack CNN (3 conv blocks of 32-64-128 channels, batch norm, max pool) on
`--image-size` (32) RGB images, 2 epochs on synthetic blobs (serving time does not depend
on what the weights learned), its raw scale 0-255 as for image files. Either is logged as
tunetrack logs a trial's model (`registry.log_pytorch_model`: pt2 network + pyfunc) into
a scratch store; then `tunetrack serve` on it (1 worker, loopback) and, over one
keep-alive HTTP connection:
- single-image latency: `--requests` (500) POSTs of one base64 PNG each, p50 / p99 ms;
- batched throughput: images/s over `--batches` POSTs of 256 images, sent as raw-pixel
  arrays (`{"inputs": ...}`) and as base64 PNGs (`{"dataframe_split": ...}`), against the
  bare network's images/s on the same 256 images in this process (the best of 5 rounds
  of `--batches` forwards); the ratio is served / bare;
- bad requests (not an image, wrong shape, empty body, 50 MB body): status, and that the
  server still answers afterwards.
Prints one JSON line; targets: p50 <= 10 ms, batched throughput >= 0.8x the bare network.
Run: python -m bench.serving [--network mlp|cnn] [--image-size 32] [--requests 500]
[--batches 20]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

P50_TARGET_MS, THROUGHPUT_TARGET = 10.0, 0.8
BATCH = 256


def _setup(network_kind: str, image_size: int):
    """(data, model config, train config, raw scale of the images a client sends)."""
    from tunetrack.models import DataConfig, ModelConfig, TrainConfig

    if network_kind == "mlp":
        return (DataConfig(name="digits"), ModelConfig(width=128, depth=2),
                TrainConfig(max_epochs=5, lr=3e-3, device="cpu"), 16.0)
    return (DataConfig(name="synthetic", n_classes=10, n_samples=600,
                       shape=(3, image_size, image_size)),
            ModelConfig(family="cnn", depth=3, width=32, batch_norm=True),
            TrainConfig(max_epochs=2, lr=3e-3, device="cpu"), 255.0)


def _model(store: Path, network_kind: str, image_size: int):
    """(artifact folder of the logged model, the network, raw test images (uint8, in the
    client's scale), that scale)."""
    import torch
    from mlflow import MlflowClient

    from tunetrack.models import Trainer, create, load_splits
    from tunetrack.tracking.registry import log_pytorch_model

    data, model_config, train_config, scale = _setup(network_kind, image_size)
    splits = load_splits(data)
    network = create(model_config, splits.input_shape, splits.n_classes, splits.mean,
                     splits.std, seed=0)
    Trainer(network, train_config, splits).fit()
    network = network.eval()
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.create_experiment("serving-bench", artifact_location=str(store / "a"))
    run = client.create_run(experiment).info.run_id
    model_id, _ = log_pytorch_model(
        client, run_id=run, experiment_id=experiment, model=network,
        example=splits.test.x[:5].numpy(), metadata={
            "classes": splits.classes, "input_shape": list(splits.input_shape),
            "raw_scale": scale})
    location = client.get_logged_model(model_id).artifact_location
    raw = np.round(splits.test.x.numpy() * scale).astype(np.uint8)
    torch.set_num_threads(os.cpu_count() or 1)  # what the server's one worker uses
    return location.removeprefix("file://"), network, raw, scale


def _png(raw_image: np.ndarray, scale: float) -> str:
    """One (C, H, W) image in the raw `scale` as base64 PNG (8-bit gray or RGB)."""
    from PIL import Image

    pixels = (raw_image.astype(np.float32) * 255 / scale).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0)).save(
        buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _npy(batch: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, batch)
    return buffer.getvalue()


def _images_per_s(conn: http.client.HTTPConnection, body: bytes, batches: int,
                  kind: str = "application/json") -> float:
    """Served images/s: `batches` POSTs of one `BATCH`-image body, after one warm-up."""
    assert _post(conn, body, kind)[0] == 200
    start = time.perf_counter()
    for _ in range(batches):
        assert _post(conn, body, kind)[0] == 200
    return batches * BATCH / (time.perf_counter() - start)


def _post(conn: http.client.HTTPConnection, body: bytes,
          kind: str = "application/json") -> tuple[int, bytes]:
    conn.request("POST", "/invocations", body, {"Content-Type": kind})
    answer = conn.getresponse()
    return answer.status, answer.read()


def _wait(port: int, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tunetrack serve exited: {server.communicate()[0]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("tunetrack serve did not start")


def _bare_images_per_s(network, x: np.ndarray, batches: int) -> float:
    """The bare network on the same float (256, C, H, W) input, best of 5 rounds."""
    import torch

    tensor = torch.from_numpy(x)
    best = float("inf")
    with torch.inference_mode():
        network(tensor)
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(batches):
                network(tensor).softmax(1)
            best = min(best, time.perf_counter() - start)
    return batches * len(x) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--image-size", type=int, default=32, help="cnn: images' side")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--port", type=int, default=5093)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunetrack-bench-serving-") as tmp:
        model, network, raw, scale = _model(Path(tmp), args.network, args.image_size)
        server = subprocess.Popen(
            [sys.executable, "-m", "tunetrack.search.cli", "serve", model, "--port",
             str(args.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            _wait(args.port, server)
            out = {"network": args.network, "input_shape": list(raw.shape[1:]),
                   **_measure(args, network, raw, scale)}
        finally:
            server.send_signal(signal.SIGINT)
            server.communicate(timeout=60)
    print(json.dumps(out))


def _pngs_body(raw: np.ndarray, scale: float) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"],
                                           "data": [[_png(d, scale)] for d in raw]}}).encode()


def _measure(args: argparse.Namespace, network, raw: np.ndarray, scale: float) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=120)
    singles = [_pngs_body(raw[i:i + 1], scale) for i in range(min(50, len(raw)))]
    for body in singles[:10]:  # warm-up
        assert _post(conn, body)[0] == 200
    latencies = []
    for i in range(args.requests):
        start = time.perf_counter()
        status, _ = _post(conn, singles[i % len(singles)])
        latencies.append((time.perf_counter() - start) * 1000)
        assert status == 200
    batch = np.resize(raw, (BATCH, *raw.shape[1:]))
    served = _images_per_s(conn, json.dumps({"inputs": batch.tolist()}).encode(), args.batches)
    served_png = _images_per_s(conn, _pngs_body(batch, scale), args.batches)
    served_npy = _images_per_s(conn, _npy(batch), args.batches, "application/x-npy")
    bad = {"not an image": json.dumps({"dataframe_split": {"columns": ["image"],
                                                           "data": [["bm90IGFuIGltYWdl"]]}}),
           "wrong shape": json.dumps({"inputs": [[[0] * 7] * 8]}), "empty body": "",
           "50 MB body": "{" + " " * (50 * 2**20) + "}"}
    statuses = {}
    for case, text in bad.items():
        status, answer = _post(conn, text.encode())
        statuses[case] = [status, json.loads(answer)["message"]]
    alive = _post(conn, singles[0])[0] == 200
    # last: the server closes a connection idle for 5 s (uvicorn's keep-alive)
    bare = _bare_images_per_s(network, batch.astype(np.float32) / np.float32(scale),
                              args.batches)
    p50, p99 = np.percentile(latencies, [50, 99])
    return {"single_p50_ms": round(float(p50), 2), "single_p99_ms": round(float(p99), 2),
            "served_images_per_s": round(served), "bare_images_per_s": round(bare),
            "throughput_ratio": round(served / bare, 3),
            "served_png_images_per_s": round(served_png),
            "png_throughput_ratio": round(served_png / bare, 3),
            "served_npy_images_per_s": round(served_npy),
            "npy_throughput_ratio": round(served_npy / bare, 3), "bad_requests": statuses,
            "answers_after_bad_requests": alive,
            "targets_met": bool(p50 <= P50_TARGET_MS
                                and max(served, served_png, served_npy) / bare
                                >= THROUGHPUT_TARGET)}


if __name__ == "__main__":
    main()
