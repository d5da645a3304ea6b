"""A user's own code for tests: one module beside a study file holding a network, a
dataset and a metric (what `model.class_path`, `dataset.class_path` and `search.metric`
name), and the study file that names them. Each test gives its module its own name: a
process imports a module name once, so two tests sharing one would share its first file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SOURCE = '''\
import torch
from torch import nn


class WideNet(nn.Module):
    def __init__(self, num_classes, in_shape, hidden=64, blocks=1):
        super().__init__()
        c, h, w = in_shape
        layers = [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU()]
        for _ in range(blocks - 1):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        layers.append(nn.Linear(hidden, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def scans(n=600, seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32)[:, None] / 16
    return torch.utils.data.TensorDataset(x, torch.tensor(d.target[:n]))


def recall_at_top2(y_true, y_prob):
    import numpy as np

    top2 = np.argsort(-y_prob, 1)[:, :2]
    return float((top2 == y_true[:, None]).any(1).mean())


recall_at_top2.direction = "maximize"
'''


def own_study(module: str, *, n_trials: int = 1, max_epochs: int = 3,
              **overrides: Any) -> dict[str, Any]:
    """A study of `module`'s network, dataset and metric (sections replaced by `overrides`)."""
    return {
        "name": module,
        "seed": 0,
        "model": {"class_path": f"{module}.WideNet",
                  "init_args": {"hidden": {"int": [16, 64], "log": True},
                                "blocks": {"int": [1, 2]}}},
        "dataset": {"class_path": f"{module}.scans", "init_args": {"n": 400}},
        "train": {"max_epochs": max_epochs, "batch_size": 64,
                  "lr": {"float": [1e-3, 1e-2], "log": True}},
        "search": {"metric": {"class_path": f"{module}.recall_at_top2"}, "n_trials": n_trials},
        "tracking": {"enabled": False},
        **overrides,
    }


def write_own_study(folder: Path, module: str, *, source: str = SOURCE,
                    **kwargs: Any) -> Path:
    """`module`.py (`source`) and `module`.yaml (`own_study`) in `folder`; the study file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(source)
    path = folder / f"{module}.yaml"
    path.write_text(yaml.safe_dump(own_study(module, **kwargs), sort_keys=False))
    return path
