"""The order training reads its data in: a global batch order that is a function of (seed, epoch) and each
item's augmentation of (seed, epoch, item), independent of workers, world size and resume."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class EpochBatchSampler(Sampler):
    """Yields (epoch, item) keys for this rank: the global batch b of an epoch is perm[b*B:(b+1)*B] of a
    permutation seeded by (seed, epoch); rank r takes its contiguous share. Incomplete batches are dropped.
    `set_epoch(epoch, start_batch)` skips the batches already done (resume mid-epoch)."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int) -> None:
        self.n, self.global_batch, self.rank, self.world, self.seed = n, global_batch, rank, world, seed
        self.per_rank = global_batch // world
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * self.per_rank
            for i in perm[start : start + self.per_rank]:
                yield self.epoch, i


class SeededItems(Dataset):
    """Runs the wrapped dataset's item with torch / numpy / random seeded by (seed, epoch, index), so an
    item's augmentation does not depend on worker, batch position or resume; global RNG states are restored."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, i = key
        s = (self.seed * 1_000_003 + epoch) * 10_000_019 + i
        py, npy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (what items draw from): torch.manual_seed would also queue a seed for
            # every lazy accelerator backend, with a stack trace each, costing more than the item itself.
            torch.default_generator.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)
            try:
                return self.dataset[i]
            finally:
                random.setstate(py)
                np.random.set_state(npy)
