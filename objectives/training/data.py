"""Feeding a map-style Dataset: a DataLoader with worker processes, pinned memory and
non-blocking copies on CUDA, persistent workers and prefetching, shuffled from the trial seed.

Tensor data never comes here: it stays on the device and is indexed by a permutation
(`objectives.training.loop`). The default worker count follows `objectives.training.cores`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from objectives.training.cores import default_loader_workers


@dataclass(frozen=True)
class LoaderOptions:
    """`objective.loader` in the study file. `workers` None: the default rule (cores.py)."""

    workers: int | None = None
    prefetch: int = 2  # batches each worker loads ahead
    pin_memory: bool = True  # CUDA only: page-locked host batches, copied without blocking

    def resolved_workers(self) -> int:
        return default_loader_workers() if self.workers is None else self.workers


PERMUTATION_CHUNK = 65_536


class EpochPermutation(Sampler[int]):
    """One `torch.randperm(n, generator)` per epoch: the order the tensor path draws on the CPU,
    so the same seed gives the same order, for a Dataset as for tensors."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n = n
        self.generator = generator
        self.skip = 0  # examples to leave out at the start of the next epoch (a stream returning to a position)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        # Handed out in chunks: a Python list of all N indices costs ~36 bytes a row, which on a
        # large memory-mapped dataset grows the trainer (and every worker forked while it is held).
        order = torch.randperm(self.n, generator=self.generator)
        first, self.skip = self.skip, 0
        for start in range(first, self.n, PERMUTATION_CHUNK):
            yield from order[start : start + PERMUTATION_CHUNK].tolist()


def make_loader(dataset: Dataset, batch_size: int, options: LoaderOptions, device: torch.device, *,
                seed: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
    workers = options.resolved_workers()
    extra = {"persistent_workers": True, "prefetch_factor": options.prefetch} if workers > 0 else {}
    sampler = EpochPermutation(len(dataset), torch.Generator().manual_seed(seed)) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
        pin_memory=options.pin_memory and device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),  # the workers' base seed
        **extra,
    )


def pins(options: LoaderOptions, device: torch.device) -> bool:
    """Whether batches arrive pinned, so the copy to the device can skip the wait."""
    return options.pin_memory and device.type == "cuda"
