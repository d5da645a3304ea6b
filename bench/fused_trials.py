"""Fused trials (`search.fuse: K`) vs the same trials one after another, side by side.

Rows (one JSON line each, the ratio last):

- `throughput mlp-digits`: 8 width-64 MLPs (2 hidden layers, batch 64, Adam, each its own
  lr and seed) trained as one fused group vs the same 8 by the ordinary `Trainer` one after
  another; trial-epochs per second, fused / sequential (target >= 4x on CPU).
- `throughput cnn-3x32x32`: the same with 8 CIFAR-shaped CNNs on synthetic 3x32x32 data
  (target >= 8x on a GPU); on CUDA it also prints the fused side's TFLOP/s.
- `throughput user-mlp-digits`: the MLP row's 8 trials as the user's own network
  (`model.class_path: bench.fused_trials.UserMLP`, the same layers), fused through
  torch.func (`models/fused_functional.py`) vs one after another.
- `user-grid`: the user's MLP at widths x depths x batch sizes, fused vs one after another
  (3 epochs, one repeat each, alternating), with each size's multiply-adds per member
  step: where the CPU rule for user networks comes from (`CPU_FUSE_MAX_MACS_USER`).
- `study digits`: `studies/digits.yaml` with 32 trials, `fuse: 8` vs `fuse: 1`, tracking
  off, in-memory storage, study seeds 0-5; summed wall time of the trials, fused /
  unfused (target <= 0.5x on 2 CPU cores), and the best value of each (target: within
  0.01; `worst_best_gap` is the lowest fused-minus-unfused best over the seeds).
- `process digits`: what a user waits for: `tunetrack run studies/digits.yaml --trials 32
  --fuse 8` vs `--fuse 1` as whole processes (imports, SQLite study, full MLflow tracking,
  the tail), each in a fresh folder, alternating; median seconds, ratio and bests.

Both sides of a throughput row run in this process, warm, alternating over `repeats`
(7 for the MLP row: VMs' speed drifts within a minute); the ratio is the median of the
per-repeat ratios. Threads: 1 (as tunetrack runs CPU trials); TUNETRACK_BENCH_THREADS=N for more.
Run: python -m bench.fused_trials [throughput|user|user-grid|study|process]   (default: all
but user-grid; `user` is the user-network throughput row alone). The throughput
rows need only `tunetrack.models` (torch, numpy, scikit-learn): `bench/gpu_check.sh` runs
them on a machine with a CUDA GPU, with or without Optuna and MLflow.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from tunetrack.models import DataConfig, ModelConfig, TrainConfig, Trainer, create, load_splits
from tunetrack.models.device import resolve_device
from tunetrack.models.fused_net import step_macs
from tunetrack.models.fused_train import FusedTrainer, Member

K = 8
STUDY = Path(__file__).resolve().parent.parent / "studies" / "digits.yaml"


class UserMLP(nn.Module):
    """A user's network (`model.class_path: bench.fused_trials.UserMLP`): the layers of
    tunetrack's MLP family, so its rows compare with the MLP row's."""

    def __init__(self, num_classes: int, in_shape: Sequence[int], hidden: int = 64,
                 blocks: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = int(torch.tensor(in_shape).prod())
        for _ in range(blocks):
            layers += [nn.Linear(fan_in, hidden), nn.ReLU()]
            fan_in = hidden
        self.net = nn.Sequential(*layers, nn.Linear(fan_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _user_mlp(hidden: int, blocks: int) -> ModelConfig:
    return ModelConfig(class_path=f"{__name__}.UserMLP",
                       init_args={"hidden": hidden, "blocks": blocks})


def _members(model: ModelConfig, train: TrainConfig) -> list[Member]:
    """K trials that differ in lr, seed and init, as a study's group would."""
    inits = ["default", "xavier_uniform", "kaiming_normal", "orthogonal"]
    return [Member(replace(model, init=inits[i % 4]),
                   replace(train, lr=train.lr * (0.5 + 0.25 * i), seed=i)) for i in range(K)]


def _sequential(members: list[Member], splits, device) -> float:
    start = time.perf_counter()
    for m in members:
        model = create(m.model, splits.input_shape, splits.n_classes, splits.mean, splits.std,
                       seed=m.train.seed)
        Trainer(model, m.train, splits, device=device).fit()
    return time.perf_counter() - start


def _fused(members: list[Member], splits, device) -> float:
    start = time.perf_counter()
    FusedTrainer(members, splits, device=device).fit()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _flops_per_sample(cfg: ModelConfig, splits, device) -> float:
    """Training FLOPs (forward + backward) of one member per sample."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create(cfg, splits.input_shape, splits.n_classes).to(device)
    x = torch.zeros(8, *splits.input_shape, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 8


def throughput(name: str, data: DataConfig, model: ModelConfig, train: TrainConfig,
               repeats: int) -> dict:
    device = resolve_device("auto")
    splits = load_splits(data)
    members = _members(model, replace(train, device=str(device)))
    warm = [replace(m, train=replace(m.train, max_epochs=1)) for m in members[:2]]
    _fused(warm, splits, device)  # imports, kernels and allocator warm on both sides
    _sequential(warm[:1], splits, device)
    ratios, fused_s, seq_s = [], [], []
    for i in range(repeats):  # alternate which side goes first
        order = (_fused, _sequential) if i % 2 == 0 else (_sequential, _fused)
        times = {fn: fn(members, splits, device) for fn in order}
        fused_s.append(times[_fused])
        seq_s.append(times[_sequential])
        ratios.append(times[_sequential] / times[_fused])
    trial_epochs = K * train.max_epochs
    out = {
        "bench": "fused_trials", "row": f"throughput {name}", "device": str(device),
        "threads": torch.get_num_threads(), "k": K, "epochs": train.max_epochs,
        "repeats": repeats,
        "fused_trial_epochs_per_s": round(trial_epochs / statistics.median(fused_s), 2),
        "sequential_trial_epochs_per_s": round(trial_epochs / statistics.median(seq_s), 2),
    }
    if device.type == "cuda":
        flops = _flops_per_sample(model, splits, device) * K * len(splits.train)
        out |= {"gpu": torch.cuda.get_device_name(device),
                "fused_tflops": round(flops * train.max_epochs
                                      / statistics.median(fused_s) / 1e12, 2)}
    out["ratio"] = round(statistics.median(ratios), 2)
    return out


def user_grid(hiddens: Sequence[int] = (32, 128, 384), depths: Sequence[int] = (1, 3),
              batches: Sequence[int] = (32, 128)) -> dict:
    """Fused / one after another for the user's MLP at each size (digits, 3 epochs, Adam),
    with the multiply-adds of one member's training step (`fused_net.step_macs`)."""
    device = resolve_device("auto")
    splits = load_splits(DataConfig(name="digits"))
    rows = []
    for i, (hidden, blocks, batch) in enumerate(
            (h, d, b) for h in hiddens for d in depths for b in batches):
        model = _user_mlp(hidden, blocks)
        train = TrainConfig(max_epochs=3, batch_size=batch, optimizer="adam", lr=2e-3,
                            device=str(device))
        members = _members(model, train)
        if i == 0:  # warm both sides
            _fused(members[:2], splits, device)
            _sequential(members[:1], splits, device)
        order = (_fused, _sequential) if i % 2 == 0 else (_sequential, _fused)
        times = {fn: fn(members, splits, device) for fn in order}
        rows.append({"hidden": hidden, "blocks": blocks, "batch": batch,
                     "macs_m": round(step_macs(model, splits.input_shape, splits.n_classes,
                                               batch) / 1e6, 2),
                     "ratio": round(times[_sequential] / times[_fused], 2)})
    return {"bench": "fused_trials", "row": "user-grid", "device": str(device),
            "threads": torch.get_num_threads(), "k": K, "epochs": 3, "grid": rows}


def study(n_trials: int = 32, seeds: Sequence[int] = (0, 1, 2, 3, 4, 5)) -> dict:
    """The digits study at fuse 8 and fuse 1 over several study seeds: wall time of the
    trials and best values.

    One seed is one path of the sampler: which architecture TPE hands a group, how many
    members are pruned. Single seeds gave fused/unfused 0.46-2.4 (docs/fused_trials.md),
    so the row runs each seed once per side (alternating which goes first) and compares
    the sums. Warm first (a 2-trial, 1-epoch study: first-use costs only the side run
    first would pay)."""
    import optuna

    from tunetrack.search.fused_groups import GROUP_ATTR
    from tunetrack.search.runner import run_study
    from tunetrack.search.study_file import load_study_file

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out: dict = {"bench": "fused_trials", "row": "study digits", "trials": n_trials,
                 "threads": torch.get_num_threads(), "seeds": list(seeds)}

    def once(k: int, seed: int, trials: int, epochs: int | None = None
             ) -> tuple[float, optuna.Study]:
        spec = load_study_file(STUDY)
        spec.tracking.enabled = False
        spec.search.fuse, spec.seed = k, seed
        if epochs is not None:
            spec.train.max_epochs = epochs
        start = time.perf_counter()
        result = run_study(spec, n_trials=trials, storage=optuna.storages.InMemoryStorage())
        return time.perf_counter() - start, result

    once(1, 0, 2, epochs=1)
    runs: dict[int, list[dict]] = {K: [], 1: []}
    for i, seed in enumerate(seeds):
        for k in (K, 1) if i % 2 == 0 else (1, K):
            took, result = once(k, seed, n_trials)
            runs[k].append({"seconds": round(took, 2), "best": round(result.best_value, 4),
                            "epochs": sum(t.user_attrs.get("epochs_run", 0)
                                          for t in result.trials),
                            "grouped": sum(GROUP_ATTR in t.user_attrs for t in result.trials)})
    for k in (K, 1):
        out[f"fuse{k}_seconds"] = round(sum(r["seconds"] for r in runs[k]), 2)
        out[f"fuse{k}_runs"] = runs[k]
    gaps = [f["best"] - u["best"] for f, u in zip(runs[K], runs[1], strict=True)]
    out["per_seed_ratio"] = [round(f["seconds"] / u["seconds"], 3)
                             for f, u in zip(runs[K], runs[1], strict=True)]
    out["worst_best_gap"] = round(min(gaps), 4)
    out["ratio"] = round(out[f"fuse{K}_seconds"] / out["fuse1_seconds"], 3)
    return out


def process(n_trials: int = 32, repeats: int = 2) -> dict:
    """`tunetrack run` at fuse 8 and fuse 1, whole processes in fresh folders (study seed
    0, the study file's own)."""
    import tempfile

    from bench.wholeprocess import alternate, median, run_process, stored_study, tunetrack_cli

    root = Path(tempfile.mkdtemp(prefix="fused-process-"))

    def side(k: int) -> Callable[[int], tuple[float, float]]:
        def once(repeat: int) -> tuple[float, float]:
            cwd = root / f"fuse{k}-{repeat}"
            timed = run_process(tunetrack_cli("run", str(STUDY), "--trials", str(n_trials),
                                              "--fuse", str(k)), cwd)
            best = stored_study(f"sqlite:///{cwd}/tunetrack.db").best_value
            return timed.seconds, round(best, 4)
        return once

    runs = alternate({"fuse8": side(K), "fuse1": side(1)}, repeats)
    out: dict = {"bench": "fused_trials", "row": "process digits", "trials": n_trials,
                 "repeats": repeats}
    for name, rows in runs.items():
        out[f"{name}_seconds"] = [round(s, 2) for s, _ in rows]
        out[f"{name}_best"] = sorted({b for _, b in rows})
    out["ratio"] = round(median([s for s, _ in runs["fuse8"]])
                         / median([s for s, _ in runs["fuse1"]]), 3)
    return out


def main() -> None:
    torch.set_num_threads(int(os.environ.get("TUNETRACK_BENCH_THREADS", "1")))
    rows = sys.argv[1:] or ["throughput", "study", "process"]
    gpu = resolve_device("auto").type == "cuda"
    if "throughput" in rows:
        mlp = TrainConfig(max_epochs=5, batch_size=64, optimizer="adam", lr=2e-3)
        print(json.dumps(throughput("mlp-digits", DataConfig(name="digits"),
                                    ModelConfig(family="mlp", depth=2, width=64), mlp,
                                    repeats=7)), flush=True)
        n = 20000 if gpu else 2048
        cnn = TrainConfig(max_epochs=2, batch_size=128, optimizer="adam", lr=2e-3)
        print(json.dumps(throughput(
            "cnn-3x32x32",
            DataConfig(name="synthetic", n_samples=n, n_classes=10, shape=(3, 32, 32)),
            ModelConfig(family="cnn", depth=3, width=16, batch_norm=True), cnn,
            repeats=3 if gpu else 1)), flush=True)
    if "throughput" in rows or "user" in rows:
        mlp = TrainConfig(max_epochs=5, batch_size=64, optimizer="adam", lr=2e-3)
        print(json.dumps(throughput("user-mlp-digits", DataConfig(name="digits"),
                                    _user_mlp(64, 2), mlp, repeats=7)), flush=True)
    if "user-grid" in rows:
        print(json.dumps(user_grid()), flush=True)
    if "study" in rows:
        print(json.dumps(study()), flush=True)
    if "process" in rows:
        print(json.dumps(process()), flush=True)


if __name__ == "__main__":
    main()
