"""The reference workflow users start from, written the textbook way on purpose.

Per-sample `DataLoader` over a `TensorDataset` (batch 64, shuffle; torchvision's per-sample
RandomCrop when the trial samples `crop_padding`), `.item()` after every batch, evaluation
through a second loader, Optuna TPE + median pruner and
`optuna_integration.MLflowCallback` logging each trial's final value. Benchmarks compare
tunetrack against this, side by side in one process, never against a stored number.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset


class CroppedTensors(Dataset):
    """Tensors with torchvision's per-sample RandomCrop(padding), as tutorials write it."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, padding: int):
        from torchvision.transforms import v2

        self.x, self.y = x, y
        self.crop = v2.RandomCrop(list(x.shape[-2:]), padding=padding)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.crop(self.x[i]), self.y[i]


def make_loaders(splits, batch_size: int = 64, crop_padding: int = 0
                 ) -> tuple[DataLoader, DataLoader]:
    """Train and val loaders over normalised tensors; `crop_padding` > 0 crops the training
    samples one by one (tunetrack's `train.augment.crop_padding`: the same shifts)."""
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    x_train, y_train = (splits.train.x - mean) / std, splits.train.y
    train = (CroppedTensors(x_train, y_train, crop_padding) if crop_padding
             else TensorDataset(x_train, y_train))
    val = TensorDataset((splits.val.x - mean) / std, splits.val.y)
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True),
        DataLoader(val, batch_size=batch_size),
    )


def train_epoch(model: nn.Module, loader: DataLoader, optimizer, loss_fn) -> tuple[float, int]:
    model.train()
    total, seen = 0.0, 0
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        seen += len(y)
    return total / seen, seen


def evaluate(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def train_adam(model: nn.Module, splits, epochs: int, lr: float, batch_size: int = 64
               ) -> list[float]:
    """The textbook training run: Adam at `lr`, val accuracy after every epoch (returned)."""
    train_loader, val_loader = make_loaders(splits, batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    accuracies = []
    for _ in range(epochs):
        train_epoch(model, train_loader, optimizer, loss_fn)
        accuracies.append(evaluate(model, val_loader))
    return accuracies


def objective_factory(spec, splits):
    """The hand-written objective over the same search space as the study file.

    Parameters come from tunetrack's `SearchSpace` (same names, same conditions) and the
    network from `tunetrack.models.create`, so only the training loop and the tracking
    differ from tunetrack's own objective. The sampled `crop_padding` is applied per sample
    with torchvision, as a tutorial would; other augmentations are refused.
    """
    import optuna

    from tunetrack.models import create
    from tunetrack.models.optimizers import build_optimizer, build_scheduler, l1_penalty
    from tunetrack.search.space import SearchSpace

    space = SearchSpace(spec)
    loaders_cache: dict[tuple[int, int], tuple[DataLoader, DataLoader]] = {}

    def objective(trial: optuna.Trial) -> float:
        cfg = space.resolve(space.sample(trial), device="cpu")
        train = cfg.train
        aug = train.augment
        if dataclasses.replace(aug, crop_padding=0).enabled or aug.mixing:
            raise ValueError("the textbook baseline applies train.augment.crop_padding only")
        key = (train.batch_size, aug.crop_padding)
        if key not in loaders_cache:
            loaders_cache[key] = make_loaders(splits, *key)
        loaders = loaders_cache[key]
        model = create(cfg.model, splits.input_shape, splits.n_classes, seed=train.seed).body
        optimizer = build_optimizer(model.parameters(), train, textbook=True)
        scheduler = build_scheduler(optimizer, train, len(loaders[0]))
        loss_fn = nn.CrossEntropyLoss()
        best = 0.0
        for epoch in range(train.max_epochs):
            model.train()
            for x, y in loaders[0]:
                optimizer.zero_grad()
                loss = loss_fn(model(x), y)
                if train.l1:
                    loss = loss + train.l1 * l1_penalty(model)
                loss.backward()
                optimizer.step()
                if (
                    train.scheduler == "onecycle"
                    and scheduler.last_epoch + 1 < scheduler.total_steps
                ):
                    scheduler.step()
                loss.item()
            accuracy = evaluate(model, loaders[1])
            if train.scheduler == "plateau":
                scheduler.step(1 - accuracy)
            elif scheduler is not None and train.scheduler != "onecycle":
                scheduler.step()
            best = max(best, accuracy)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    return objective


def run_textbook_study(
    spec, splits, *, n_trials: int, tracking_uri: str
) -> tuple[float, object]:
    """Optuna TPE + median pruner + MLflowCallback; returns (seconds, study)."""
    import optuna
    from optuna_integration.mlflow import MLflowCallback

    callback = MLflowCallback(tracking_uri=tracking_uri, metric_name="val_accuracy")
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    )
    start = time.perf_counter()
    study.optimize(
        objective_factory(spec, splits),
        n_trials=n_trials,
        callbacks=[callback],
    )
    return time.perf_counter() - start, study
