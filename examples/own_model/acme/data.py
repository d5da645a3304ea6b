"""The dataset: any callable returning one torch `Dataset` of (image, label) items, which
tunetrack splits (stratified, seeded), or a mapping {train, val, test} of them.

Here: scikit-learn's 8x8 digits made imbalanced, the case where accuracy misleads and a
per-class metric is what a user wants to optimise."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class ImbalancedDigits(Dataset):
    def __init__(self, keep_minority: float = 0.25, seed: int = 0):
        from sklearn.datasets import load_digits

        digits = load_digits()
        rng = np.random.default_rng(seed)
        # digits 0-4 keep every image, 5-9 only `keep_minority` of theirs
        keep = (digits.target < 5) | (rng.random(len(digits.target)) < keep_minority)
        self.x = torch.tensor(digits.images[keep], dtype=torch.float32)[:, None] / 16.0
        self.targets = torch.tensor(digits.target[keep])
        self.classes = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.x[i], int(self.targets[i])


def imbalanced_digits(keep_minority: float = 0.25, seed: int = 0) -> Dataset:
    return ImbalancedDigits(keep_minority, seed)
