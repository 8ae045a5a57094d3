"""The task's loss and metric over a fused group's stacked outputs: one value per member, [K].

`torch.vmap` over the task's function gives that for any function, at the price of vmap's Python
per call (on the CPU, a fair part of a small model's fused update). The built-in functions most
tasks use have a direct form here, one call over the whole group, with each member's value what
the function gives its own slice:

- `cross_entropy` (class-index targets, no class weights): the per-example losses of all members
  in one call, then each member's mean (`reduction="none"` then a mean along dim 1: the gradient
  is the solo one's; the loss's last bit may differ, as under vmap);
- `accuracy`: argmax and match over [K, N, C], a mean per member (sums of 0 and 1: exact).

Anything else goes through vmap.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from objectives.task import accuracy

Stacked = Callable[[Tensor, Tensor], Tensor]


def stacked_cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """outputs [K, B, C], targets [K, B] class indices: each member's mean cross entropy, [K]."""
    k, b = targets.shape
    per_example = F.cross_entropy(outputs.reshape(k * b, outputs.shape[-1]), targets.reshape(k * b), reduction="none")
    return per_example.view(k, b).mean(dim=1)


def stacked_accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    """outputs [K, N, C], targets [N] (shared by the members): each member's accuracy, [K]."""
    return (outputs.argmax(dim=2) == targets).float().mean(dim=1)


def member_losses(loss: Callable, targets: Tensor) -> Stacked:
    """`loss` over stacked outputs and targets ([K, B, ...] both): each member's loss, [K].
    `targets`: the training targets, which say whether the direct form applies (class indices,
    none of them cross entropy's ignore_index, whose mean would leave them out)."""
    if loss is F.cross_entropy and targets.dim() == 1 and not targets.is_floating_point() and \
            not bool((targets == -100).any()):
        return stacked_cross_entropy
    return torch.vmap(loss)


def member_metrics(metric: Callable, targets: Tensor) -> Stacked:
    """`metric` over stacked outputs [K, N, ...] and shared targets [N, ...]: each member's, [K]."""
    if metric is accuracy and targets.dim() == 1:
        return stacked_accuracy
    return torch.vmap(metric, in_dims=(0, None))
