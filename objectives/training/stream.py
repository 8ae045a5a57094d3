"""The training batches: endless, epoch after epoch, each epoch in a fresh order drawn from the
trial's seed. Tensor data is indexed on the device by a permutation; a Dataset is fed by its
DataLoader (`objectives.training.data`), whose sampler draws the same permutation.

A stream's position (the generators' states at the current epoch's start, and the batches taken
in it) can be saved and returned to: the batches after it are drawn again from the saved states,
never held in memory. A cooldown branch trains on the next batches, and the main run then gets the
same ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from objectives.task import Task
from objectives.training.batches import Batch, to_device
from objectives.training.budget import TrialPlan
from objectives.training.data import LoaderOptions, make_loader


@dataclass(frozen=True)
class StreamPosition:
    epoch_state: Tensor  # the order's generator, before it drew the current epoch's permutation
    loader_state: Tensor | None  # a DataLoader's own generator (its workers' base seed)
    slot: int  # batches taken in the current epoch


class BatchStream:
    """`next(stream)`: the next training batch, on the device. The plain generator, without the
    bookkeeping a position needs, is `batches` (what the loop iterates when nothing saves one)."""

    def __init__(self, task: Task, plan: TrialPlan, generator: torch.Generator, device: torch.device, seed: int,
                 loader: LoaderOptions, non_blocking: bool):
        self.task, self.plan, self.device, self.non_blocking = task, plan, device, non_blocking
        self.loader = None
        if isinstance(task.train, tuple | list):
            self.generator = generator
        else:
            self.loader = make_loader(task.train, plan.batch_size, loader, device, seed=seed, shuffle=True,
                                      drop_last=plan.drop_last)
            self.generator = self.loader.sampler.generator
        self.new_epoch(0)  # a position before the first batch is the generators' state as given
        self.batches = self.generate(0)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        batch = next(self.batches)
        self.slot += 1
        return batch

    def generate(self, first_slot: int) -> Iterator[Batch]:
        if self.loader is None:
            return self.tensor_batches(first_slot)
        return self.loader_batches(first_slot)

    def new_epoch(self, slot: int) -> None:
        self.epoch_state = self.generator.get_state()
        self.loader_state = None if self.loader is None else self.loader.generator.get_state()
        self.slot = slot

    def tensor_batches(self, first_slot: int) -> Iterator[Batch]:
        x, y = self.task.train
        n, batch_size, per_epoch = self.plan.n_train, self.plan.batch_size, self.plan.iterations_per_epoch
        generator, first = self.generator, first_slot
        while True:
            self.new_epoch(first)
            perm = torch.randperm(n, device=x.device, generator=generator)
            for slot in range(first, per_epoch):
                idx = perm[slot * batch_size : (slot + 1) * batch_size]
                yield x[idx], y[idx]
            first = 0

    def loader_batches(self, first_slot: int) -> Iterator[Batch]:
        loader, device, non_blocking = self.loader, self.device, self.non_blocking
        loader.sampler.skip = first_slot * self.plan.batch_size
        self.new_epoch(first_slot)
        while True:
            for batch in loader:
                yield to_device(batch, device, non_blocking)
            self.new_epoch(0)

    def position(self) -> StreamPosition:
        return StreamPosition(self.epoch_state, self.loader_state, self.slot)

    def seek(self, position: StreamPosition) -> None:
        """Return to a saved position: the next batch is the one that followed it."""
        self.batches.close()
        self.generator.set_state(position.epoch_state)
        if self.loader is not None:
            self.loader.generator.set_state(position.loader_state)
        self.batches = self.generate(position.slot)

    def close(self) -> None:
        """End the batches; a DataLoader's worker processes end with it."""
        self.batches.close()
        self.loader = None
