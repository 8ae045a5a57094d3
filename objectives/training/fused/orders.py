"""The members' batch indices, update by update: each member's own order (`BatchStream`'s for the
same seed: a fresh permutation per epoch from its generator), taken for the whole group at once.

Members at the same slot of their epochs (the usual case: they start together, and a refill joins
at the others' epoch start unless every batch is full) share one stacked tensor of their epochs'
permutations, [K, n], and an update's indices are one slice of it, [K, B]. Members at different
slots (a refill that joined mid-epoch) take one slice each, stacked. `gather` takes the rows.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from objectives.training.budget import TrialPlan


class MemberOrder:
    """One member's batches: `take()` moves to its next batch (a new permutation at an epoch's
    start); `indices()` are that batch's."""

    def __init__(self, plan: TrialPlan, generator: torch.Generator):
        self.n, self.size, self.per_epoch = plan.n_train, plan.batch_size, plan.iterations_per_epoch
        self.generator = generator
        self.perm: Tensor | None = None
        self.slot = self.per_epoch - 1  # the first `take` starts an epoch

    def take(self) -> bool:
        """Move to the next batch; True when it starts a new epoch (a new permutation)."""
        self.slot += 1
        if self.slot < self.per_epoch:
            return False
        self.slot = 0
        self.perm = torch.randperm(self.n, device=self.generator.device, generator=self.generator)
        return True

    def indices(self) -> Tensor:
        return self.perm[self.slot * self.size : (self.slot + 1) * self.size]

    def twin(self) -> MemberOrder:
        """An order that goes on as this one would, apart from it (a horizon's branch): its own
        generator, in this one's state."""
        twin = copy.copy(self)
        twin.generator = torch.Generator(device=self.generator.device)
        twin.generator.set_state(self.generator.get_state())
        return twin


class GroupOrders:
    """`next(orders)`: the next update's indices for these members, [K, B], row i member i's."""

    def __init__(self) -> None:
        self.stacked: Tensor | None = None  # the members' permutations, stacked
        self.members: list[MemberOrder] = []  # whose, in order

    def next(self, orders: Sequence[MemberOrder]) -> Tensor:
        new_epoch = False
        for order in orders:
            new_epoch |= order.take()
        slot, size = orders[0].slot, orders[0].size
        if any(order.slot != slot for order in orders):
            self.stacked = None  # their permutations move on apart
            return torch.stack([order.indices() for order in orders])
        if new_epoch or self.stacked is None or len(self.members) != len(orders) or \
                any(a is not b for a, b in zip(self.members, orders)):
            self.stacked = torch.stack([order.perm for order in orders])
            self.members = list(orders)
        return self.stacked[:, slot * size : (slot + 1) * size].contiguous()  # one copy, then `gather` views it


def gather(data: Tensor, idx: Tensor) -> Tensor:
    """`data[idx]` for an index [K, B]: `index_select` of whole rows over the flattened index (the
    same values; advanced indexing copies element by element, several times slower for wide
    rows: 340 against 48 us for [16, 32] rows of 784 floats on one CPU thread)."""
    return data.index_select(0, idx.reshape(-1)).view(*idx.shape, *data.shape[1:])
