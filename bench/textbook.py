"""The reference workflow users start from, written the textbook way on purpose.

Per-sample `DataLoader` over a `TensorDataset` (batch 64, shuffle), `.item()` after every
batch, evaluation through a second loader, Optuna TPE + median pruner and
`optuna_integration.MLflowCallback` logging each trial's final value. Benchmarks compare
tunetrack against this, side by side in one process, never against a stored number.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}


def make_loaders(splits, batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    train = TensorDataset((splits.train.x - mean) / std, splits.train.y)
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


def mlp(
    in_features: int, n_classes: int, depth: int, width: int, activation: str, dropout: float
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(in_features, width), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, n_classes))


def objective_factory(splits, max_epochs: int = 20):
    """The hand-written objective: same kind of MLP space as studies/digits.yaml."""
    import optuna

    in_features = int(torch.tensor(splits.input_shape).prod())

    def objective(trial: optuna.Trial) -> float:
        depth = trial.suggest_int("depth", 1, 3)
        width = trial.suggest_int("width", 32, 512, log=True)
        activation = trial.suggest_categorical("activation", ["relu", "gelu", "leaky_relu", "tanh"])
        dropout = trial.suggest_float("dropout", 0.0, 0.5)
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        optimizer_name = trial.suggest_categorical("optimizer", ["sgd", "adam", "adamw"])
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        model = mlp(in_features, len(splits.classes), depth, width, activation, dropout)
        optimizer = {
            "sgd": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=weight_decay),
            "adam": lambda p: torch.optim.Adam(p, lr=lr, weight_decay=weight_decay),
            "adamw": lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay),
        }[optimizer_name](model.parameters())
        train_loader, val_loader = make_loaders(splits)
        loss_fn = nn.CrossEntropyLoss()
        best = 0.0
        for epoch in range(max_epochs):
            train_epoch(model, train_loader, optimizer, loss_fn)
            accuracy = evaluate(model, val_loader)
            best = max(best, accuracy)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    return objective


def run_textbook_study(
    splits, *, n_trials: int, tracking_uri: str, seed: int = 0, max_epochs: int = 20, on_trial=None
) -> tuple[float, object]:
    """Optuna TPE + median pruner + MLflowCallback; returns (seconds, study)."""
    import optuna
    from optuna_integration.mlflow import MLflowCallback

    callback = MLflowCallback(tracking_uri=tracking_uri, metric_name="val_accuracy")
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    )
    start = time.perf_counter()
    study.optimize(
        objective_factory(splits, max_epochs),
        n_trials=n_trials,
        callbacks=[callback, *([on_trial] if on_trial else [])],
    )
    return time.perf_counter() - start, study
