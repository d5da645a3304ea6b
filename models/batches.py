"""Where training batches come from: resident tensors or a streaming DataLoader.

Both draw the same index permutation from the same (CPU) generator, so for one seed they yield
the same batches in the same order (the equivalence test relies on it). The resident path
indexes tensors that already live on the device: no per-sample Python, no host copies.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import Split


def _index_batches(n: int, batch_size: int, perm: torch.Tensor | None) -> list[torch.Tensor]:
    """Index batches of one pass; with `perm` (a shuffled training pass) a trailing 1-sample
    batch is dropped, since it breaks batch-norm. Evaluation passes (no `perm`) keep every
    sample."""
    order = perm if perm is not None else torch.arange(n)
    batches = list(order.split(batch_size))
    if perm is not None and len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


def count_train_batches(n: int, batch_size: int) -> int:
    """Optimizer steps in one training pass over `n` samples (see `_index_batches`)."""
    batches = math.ceil(n / batch_size)
    last = n - (batches - 1) * batch_size
    return batches - 1 if batches > 1 and last < 2 else batches


class ResidentBatches:
    """The whole split on the device; batches are index gathers."""

    def __init__(self, split: Split, device: torch.device, channels_last: bool = False):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.x = split.x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        self.y = split.y.to(device, non_blocking=True)
        self.device = device

    def __len__(self) -> int:
        return len(self.y)

    def iterate(self, batch_size: int, gen: torch.Generator | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = None
        if gen is not None:
            perm = torch.randperm(len(self.y), generator=gen).to(self.device)
        for idx in _index_batches(len(self.y), batch_size, perm):
            yield self.x[idx], self.y[idx]


class _Rows(Dataset):
    """Tensor rows with a batched `__getitems__`, so the loader gathers whole batches."""

    def __init__(self, split: Split):
        self.x, self.y = split.x, split.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]

    def __getitems__(self, idx: list[int]):
        index = torch.as_tensor(idx)
        return self.x[index], self.y[index]


class _PermutationBatches(Sampler[list[int]]):
    def __init__(self, n: int, batch_size: int, gen: torch.Generator | None):
        self.n, self.batch_size, self.gen = n, batch_size, gen

    def __iter__(self):
        perm = None if self.gen is None else torch.randperm(self.n, generator=self.gen)
        return (b.tolist() for b in _index_batches(self.n, self.batch_size, perm))

    def __len__(self) -> int:
        if self.gen is None:
            return math.ceil(self.n / self.batch_size)
        return count_train_batches(self.n, self.batch_size)


class StreamingBatches:
    """Host-resident data streamed to the device by a DataLoader (workers, pinned memory)."""

    def __init__(self, split: Split, device: torch.device, num_workers: int = 0,
                 channels_last: bool = False):
        self.rows = _Rows(split)
        self.device = device
        self.num_workers = num_workers
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.rows)

    def iterate(self, batch_size: int, gen: torch.Generator | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            self.rows, batch_sampler=_PermutationBatches(len(self.rows), batch_size, gen),
            collate_fn=lambda batch: batch, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.num_workers else None,
        )
        for x, y in loader:
            yield (x.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt),
                   y.to(self.device, non_blocking=True))
