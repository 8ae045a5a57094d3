"""Whether a group of members can train fused, and if not, why (one line): what fusion shares
(architecture, batch size, training and validation data, loss, metric, optimizer kind) must be
the same for every member, and the instruments the fused loop does not run yet must be off."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from objectives.training.budget import Budget
from objectives.training.fused.model import architecture_difference
from objectives.training.options import TrainerOptions

if TYPE_CHECKING:
    from objectives.training.fused.trainer import FusedMember


def same_function(a, b) -> bool:
    """The same callable, or the same code (a factory that builds its loss anew per trial)."""
    return a is b or getattr(a, "__code__", a) is getattr(b, "__code__", b)


def same_tensors(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return all(s is t or (s.shape == t.shape and s.dtype == t.dtype and s.device == t.device and torch.equal(s, t))
               for s, t in zip(a, b, strict=True))


def options_refusal(options: TrainerOptions, budget: Budget) -> str | None:
    """What the fused loop does not run (yet): each is trained one trial at a time."""
    if budget.timed:
        return f"a {budget.unit} budget is timed per trial"
    if options.cooldown_fraction is not None:
        return "schedule.cooldown_evaluations is not measured in a fused group"
    return None


def refusal(members: Sequence[FusedMember], options: TrainerOptions, budget: Budget) -> str | None:
    """None when the members can train as one fused model, else why not."""
    reason = options_refusal(options, budget)
    if reason is not None:
        return reason
    first = members[0]
    for i, member in enumerate(members):
        task = member.task
        if not isinstance(task.train, tuple | list) or not isinstance(task.val, tuple | list):
            return "the task's data is a Dataset (fusion indexes tensors on the device)"
        if task.augment is not None:
            return "the task augments its batches"
        batch = member.plan.batch_size
        if i == 0:
            continue
        if (member.plan.n_train, batch, member.plan.drop_last) != (first.plan.n_train, first.plan.batch_size,
                                                                   first.plan.drop_last):
            return f"member {i} trains with batch {batch}, member 0 with {first.plan.batch_size}"
        if not same_tensors(task.train, first.task.train) or not same_tensors(task.val, first.task.val):
            return f"member {i}'s data differs from member 0's (it depends on the trial's parameters or seed)"
        if not same_function(task.loss, first.task.loss) or not same_function(task.metric, first.task.metric):
            return f"member {i}'s loss or metric differs from member 0's"
        if member.optimizer.name != first.optimizer.name:
            return f"member {i} trains with {member.optimizer.name}, member 0 with {first.optimizer.name}"
    reason = architecture_difference([m.task.model for m in members])
    return None if reason is None else f"architectures differ: {reason}"
