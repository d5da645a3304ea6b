"""The plain PyTorch script `bench.end_to_end_trial` races the CLI against.

What a user writes by hand for one fixed model: load the digits, build the MLP, train it
with the textbook loop (`bench.textbook`: per-sample DataLoader, Adam, `.item()` per batch,
validation through a second loader after every epoch) and print the result. It takes the
same split (tunetrack's `load_splits`, seed 0) and the same network and initial weights
(`tunetrack.models.create`) as the study, so only the workflow around them differs.
Prints one JSON line: best and final val accuracy.
Run: python -m bench.plain_trial [--epochs 100] [--depth 3] [--width 512]
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from bench.textbook import train_adam
    from tunetrack.models import DataConfig, ModelConfig, create, load_splits

    splits = load_splits(DataConfig(name="digits", seed=args.seed))
    model = create(ModelConfig(family="mlp", depth=args.depth, width=args.width),
                   splits.input_shape, splits.n_classes, seed=args.seed).body
    torch.manual_seed(args.seed)  # the loader's shuffling
    accuracies = train_adam(model, splits, args.epochs, args.lr, args.batch_size)
    print(json.dumps({"best_val_accuracy": max(accuracies),
                      "final_val_accuracy": accuracies[-1]}))


if __name__ == "__main__":
    main()
