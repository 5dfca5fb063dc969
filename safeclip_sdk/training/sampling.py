"""A deterministic, resumable, rank-aware batch order.

Epoch ``e`` visits the permutation ``randperm(n, seed + e)``. It is cut into global micro-batches
of ``micro_batch_size * world_size`` items; rank ``r`` takes the ``r``-th slice of each. Gathered in
rank order, a step therefore sees exactly the items a single process with the same global batch
would see, and a resumed run can start at any micro-batch without replaying the ones before.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class ResumableBatchSampler:
    def __init__(self, num_items: int, micro_batch_size: int, *, seed: int, epoch: int,
                 rank: int = 0, world_size: int = 1, start_micro_batch: int = 0, shuffle: bool = True):
        self.num_items = num_items
        self.micro_batch_size = micro_batch_size
        self.seed, self.epoch = seed, epoch
        self.rank, self.world_size = rank, world_size
        self.start_micro_batch = start_micro_batch
        self.shuffle = shuffle

    @property
    def global_micro_batch(self) -> int:
        return self.micro_batch_size * self.world_size

    def micro_batches_per_epoch(self) -> int:
        """Whole global micro-batches only: every rank runs the same number of batches."""
        return self.num_items // self.global_micro_batch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_items))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_items, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        for micro in range(self.start_micro_batch, self.micro_batches_per_epoch()):
            start = micro * self.global_micro_batch + self.rank * self.micro_batch_size
            yield order[start:start + self.micro_batch_size]

    def __len__(self) -> int:
        return max(0, self.micro_batches_per_epoch() - self.start_micro_batch)
