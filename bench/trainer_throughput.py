"""Images/s of the tunetrack trainer vs the textbook loop: same model, data and epochs.

Two workloads: an MLP on digits and a CNN on CIFAR-shaped (3x32x32) synthetic data.
Both sides are timed the same way: training epochs plus the validation pass after each
(the textbook evaluates through its second loader, tunetrack's `epoch_seconds` includes
its validation). Each prints one JSON line; the ratio (tunetrack / textbook images per
second) comes last, with both final validation accuracies so "same accuracy band" is
visible, not assumed. It also prints the training FLOP/s achieved (FLOPs counted by torch's
FlopCounterMode; validation's forward passes are not counted): on CUDA as TFLOP/s and a
fraction of the device's peak, on CPU as GFLOP/s beside this CPU's own fp32 matmul speed.
Threads: 1 by default, as tunetrack runs CPU trials; TUNETRACK_BENCH_THREADS=N for more.
Run: python -m bench.trainer_throughput
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch
from torch import nn

from bench import textbook
from tunetrack.models import DataConfig, ModelConfig, TrainConfig, Trainer, create, load_splits
from tunetrack.models.device import resolve_device

ACCURACY_BAND = 0.01  # mean final val accuracies at most this far apart
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


def textbook_run(model: nn.Module, splits, epochs: int, lr: float) -> tuple[float, float]:
    start = time.perf_counter()
    accuracy = textbook.train_adam(model, splits, epochs, lr)[-1]
    seconds = time.perf_counter() - start
    return epochs * len(splits.train) / seconds, accuracy


def tunetrack_run(
    model_cfg: ModelConfig, splits, epochs: int, batch_size: int, lr: float, seed: int = 0
) -> tuple[float, float, Trainer]:
    model = create(model_cfg, splits.input_shape, splits.n_classes, splits.mean, splits.std,
                   seed=seed)
    cfg = TrainConfig(max_epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam",
                      seed=seed)
    trainer = Trainer(model, cfg, splits)
    fit = trainer.fit()
    train_seconds = sum(r.epoch_seconds for r in fit.history)
    return epochs * len(splits.train) / train_seconds, fit.history[-1].val_accuracy, trainer


def flops_per_image(model: nn.Module, shape, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(8, *shape, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 8


def sgemm_gflops(n: int = 1024, repeats: int = 10) -> float:
    """This CPU's fp32 matmul speed at the current thread count: the practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def bench(
    name: str, data: DataConfig, model_cfg: ModelConfig, epochs: int, lr: float,
    batch_size: int, repeats: int, tunetrack_lr: float | None = None,
) -> dict:
    """`repeats` runs per side, alternating sides and seeds (this VM's speed drifts by tens
    of percent within a minute): median images/s and mean final val accuracy per side."""
    splits = load_splits(data)
    ours_lr = tunetrack_lr or lr
    textbook_ips, textbook_acc, ours_ips, ours_acc = [], [], [], []
    for seed in range(repeats):
        base = create(model_cfg, splits.input_shape, splits.n_classes, seed=seed)
        torch.manual_seed(seed)  # the textbook loader's shuffling
        ips, acc = textbook_run(base.body, splits, epochs, lr)
        textbook_ips.append(ips)
        textbook_acc.append(acc)
        ips, acc, trainer = tunetrack_run(model_cfg, splits, epochs, batch_size, ours_lr,
                                          seed)
        ours_ips.append(ips)
        ours_acc.append(acc)
    textbook_ips, ours_ips = statistics.median(textbook_ips), statistics.median(ours_ips)
    out = {
        "bench": "trainer_throughput",
        "workload": name,
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "epochs": epochs,
        "repeats": repeats,
        "textbook_images_per_s": round(textbook_ips),
        "textbook_val_acc": round(statistics.mean(textbook_acc), 4),
        "tunetrack_batch_size": batch_size,
        "tunetrack_lr": ours_lr,
        "tunetrack_images_per_s": round(ours_ips),
        "tunetrack_val_acc": round(statistics.mean(ours_acc), 4),
        "same_band": abs(statistics.mean(ours_acc) - statistics.mean(textbook_acc))
        <= ACCURACY_BAND,
    }
    flops = flops_per_image(trainer.model, splits.input_shape, trainer.device)
    achieved = flops * ours_ips / 1e12
    if trainer.device.type == "cuda":
        name_gpu = torch.cuda.get_device_name(trainer.device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name_gpu), None)
        out |= {
            "gpu": name_gpu,
            "tflops": round(achieved, 2),
            "peak_fraction": round(achieved / peak, 4) if peak else None,
        }
    else:  # the roofline here: how far is training from this CPU's own matmul speed?
        out |= {
            "gflops": round(achieved * 1e3, 1),
            "textbook_gflops": round(flops * textbook_ips / 1e9, 1),
            "cpu_sgemm_gflops": round(sgemm_gflops(), 1),
        }
    out["ratio"] = round(ours_ips / textbook_ips, 2)
    return out


def main() -> None:
    torch.set_num_threads(int(os.environ.get("TUNETRACK_BENCH_THREADS", "1")))
    gpu = resolve_device("auto").type == "cuda"
    mlp = {"data": DataConfig(name="digits"), "epochs": 15, "lr": 2e-3, "repeats": 3,
           "model_cfg": ModelConfig(family="mlp", depth=2, width=256)}
    # like with like first: the textbook's own batch and LR, so the ratio is the trainer's alone
    print(json.dumps(bench("mlp-digits-same-batch", batch_size=64, **mlp)))
    # the recipe tunetrack ships: big batches (8x fewer steps) at a 4x learning rate
    print(json.dumps(bench("mlp-digits", batch_size=512, tunetrack_lr=8e-3, **mlp)))
    n = 20000 if gpu else 4000
    print(
        json.dumps(
            bench(
                "cnn-synthetic-3x32x32",
                DataConfig(name="synthetic", n_samples=n, n_classes=10, shape=(3, 32, 32)),
                ModelConfig(family="cnn", depth=3, width=32, batch_norm=True),
                epochs=3,
                lr=2e-3,
                batch_size=256 if gpu else 64,  # CPU: the textbook's batch, same steps
                repeats=1,
            )
        )
    )


if __name__ == "__main__":
    main()
