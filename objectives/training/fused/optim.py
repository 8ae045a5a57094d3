"""Optimizers over stacked parameters: dim 0 of every tensor is the member, and each member has
its own LR, momentum, betas, eps, weight decay and step count.

The arithmetic is torch.optim's single-tensor path (what SGD, Adam and AdamW run on the CPU), op
for op. A hyperparameter every member shares is applied as the Python scalar torch.optim applies;
one that differs is a float32 tensor of shape [K, 1, ...] broadcast along dim 0, holding the value
the scalar kernel would have cast to (computed in double first, as torch.optim computes it). On the
CPU the two give the same bits (tests/test_fused.py checks each member against torch.optim), so a
member's update does not depend on its neighbours, and a NaN in one member's slice stays in it:
every op is elementwise or per member.

A member that leaves the group is dropped from every tensor (`keep`), so it costs nothing after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Value = float | Tensor  # a shared scalar, or one value per member shaped to broadcast


@dataclass(frozen=True)
class MemberOptimizer:
    """One member's optimizer settings (its LR comes from its schedule, update by update)."""

    name: str  # sgd | adam | adamw
    momentum: float = 0.0  # sgd
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float = 1e-8  # adam, adamw


def per_member(values: Sequence[float], like: Tensor) -> Value:
    """The shared scalar when every member holds the same value, else a [K, 1, ...] tensor."""
    first = values[0]
    if all(v == first for v in values):
        return first
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *[1] * (like.dim() - 1))


def per_member_list(values: Sequence[float], params: Sequence[Tensor]) -> float | list[Tensor]:
    """`per_member` for each of `params` (one tensor of the values, viewed to each one's shape):
    the shared scalar, else a list of [K, 1, ...] tensors, one per parameter."""
    first = values[0]
    if all(v == first for v in values):
        return first
    columns: dict[tuple, Tensor] = {}  # one tensor per dtype and device (usually one in all)
    views: dict[tuple, Tensor] = {}  # and one view of it per shape of broadcast
    for p in params:
        kind = (p.dtype, p.device)
        if kind not in columns:
            columns[kind] = torch.tensor(values, dtype=p.dtype, device=p.device)
        if (kind, p.dim()) not in views:
            views[(kind, p.dim())] = columns[kind].view(-1, *[1] * (p.dim() - 1))
    return [views[((p.dtype, p.device), p.dim())] for p in params]


class StackedOptimizer:
    """`step()` updates every stacked tensor from its `.grad`; `lrs` holds each member's LR for the
    next step (the trainer sets it from the members' schedules)."""

    def __init__(self, params: list[Tensor], members: Sequence[MemberOptimizer]):
        if len({m.name for m in members}) != 1:
            raise ValueError("a fused group trains with one optimizer: " + ", ".join(m.name for m in members))
        self.params = params
        self.members = list(members)
        self.lrs = [0.0] * len(members)
        self.state: list[dict[str, Tensor]] = [self.new_state(p) for p in params]
        self.members_changed()

    def new_state(self, param: Tensor) -> dict[str, Tensor]:
        return {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def keep(self, index: Sequence[int], params: list[Tensor]) -> None:
        """Keep the members at `index` (positions in dim 0), in that order; `params` are the
        weights' tensors after the same selection."""
        rows = torch.tensor(list(index), dtype=torch.long, device=params[0].device)
        self.params = params
        self.members = [self.members[i] for i in index]
        self.lrs = [self.lrs[i] for i in index]
        self.state = [{k: v.index_select(0, rows) for k, v in st.items()} for st in self.state]
        self.kept(index)
        self.members_changed()

    def kept(self, index: Sequence[int]) -> None:
        """Per-member counters beyond the tensors (Adam's step counts)."""

    def add(self, members: Sequence[MemberOptimizer], params: list[Tensor]) -> None:
        """Append new members after the others (a refill): their state starts as a fresh
        optimizer's (zeros, no steps); `params` are the weights' tensors after the same append."""
        if any(m.name != self.members[0].name for m in members):
            raise ValueError("a fused group trains with one optimizer")
        self.params = params
        self.members += list(members)
        self.lrs += [0.0] * len(members)
        self.state = [{k: torch.cat([v, v.new_zeros((len(members), *v.shape[1:]))]) for k, v in st.items()}
                      for st in self.state]
        self.added(len(members))
        self.members_changed()

    def added(self, count: int) -> None:
        """Per-member counters for `count` new members."""

    def members_changed(self) -> None:
        """What a step derives from the members' settings, rebuilt when they change."""

    def step(self) -> None:
        raise NotImplementedError


class StackedSGD(StackedOptimizer):
    """torch.optim.SGD (no dampening, no Nesterov): weight decay into the gradient, momentum buffer,
    then p -= lr * buffer. The buffer starts at zero: 0 * momentum + g is g, bit for bit, the
    clone torch.optim takes on a member's first step.

    Each op runs over all the stacked tensors at once (`torch._foreach_*`: on the CPU, the same
    kernel on each tensor in turn, so the same bits as one call per tensor, without Python per
    tensor); the per-member momenta and weight decays are built when the members change, the LRs
    once per step."""

    def new_state(self, param: Tensor) -> dict[str, Tensor]:
        return {"momentum_buffer": torch.zeros_like(param)} if any(m.momentum for m in self.members) else {}

    def members_changed(self) -> None:
        self.momentum = per_member_list([m.momentum for m in self.members], self.params)
        self.decay = per_member_list([m.weight_decay for m in self.members], self.params)
        self.buffers = [st["momentum_buffer"] for st in self.state if "momentum_buffer" in st]

    def step(self) -> None:
        params, wd = self.params, self.decay
        with torch.no_grad():
            grads = [p.grad for p in params]
            if isinstance(wd, list):
                grads = torch._foreach_addcmul(grads, params, wd)
            elif wd != 0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if self.buffers:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads)
                grads = self.buffers
            lr = per_member_list([-lr for lr in self.lrs], params)  # -(lr as float32) is (-lr) as float32
            if isinstance(lr, list):
                torch._foreach_addcmul_(params, grads, lr)
            else:
                torch._foreach_add_(params, grads, alpha=lr)


class StackedAdam(StackedOptimizer):
    """torch.optim.Adam, or AdamW (`decoupled`): each member's own betas, eps, weight decay and
    step count, its bias corrections computed in double as torch.optim computes them."""

    def __init__(self, params: list[Tensor], members: Sequence[MemberOptimizer], *, decoupled: bool):
        super().__init__(params, members)
        self.decoupled = decoupled
        self.steps = [0] * len(members)

    def new_state(self, param: Tensor) -> dict[str, Tensor]:
        return {"exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}

    def kept(self, index: Sequence[int]) -> None:
        self.steps = [self.steps[i] for i in index]

    def added(self, count: int) -> None:
        self.steps += [0] * count

    def step(self) -> None:
        self.steps = [s + 1 for s in self.steps]
        ms, lrs = self.members, self.lrs
        beta1 = [m.betas[0] for m in ms]
        beta2 = [m.betas[1] for m in ms]
        one_minus_beta1 = [1 - b for b in beta1]
        one_minus_beta2 = [1 - b for b in beta2]
        step_size = [-(lr / (1 - b**s)) for lr, b, s in zip(lrs, beta1, self.steps)]
        bias2_sqrt = [(1 - b**s) ** 0.5 for b, s in zip(beta2, self.steps)]
        eps = [m.eps for m in ms]
        decays = [m.weight_decay for m in ms]
        shrink = [1 - lr * wd for lr, wd in zip(lrs, decays)]  # AdamW's decoupled decay
        with torch.no_grad():
            for p, st in zip(self.params, self.state):
                grad, exp_avg, exp_avg_sq = p.grad, st["exp_avg"], st["exp_avg_sq"]
                if any(decays):
                    if self.decoupled:
                        p.mul_(per_member(shrink, p))
                    else:
                        wd = per_member(decays, p)
                        grad = grad.addcmul(p, wd) if isinstance(wd, Tensor) else grad.add(p, alpha=wd)
                exp_avg.lerp_(grad, per_member(one_minus_beta1, p))
                exp_avg_sq.mul_(per_member(beta2, p))
                value = per_member(one_minus_beta2, p)
                if isinstance(value, Tensor):
                    exp_avg_sq.addcmul_(grad * value, grad)
                else:
                    exp_avg_sq.addcmul_(grad, grad, value=value)
                denom = (exp_avg_sq.sqrt() / per_member(bias2_sqrt, p)).add_(per_member(eps, p))
                size = per_member(step_size, p)
                if isinstance(size, Tensor):
                    p.add_((exp_avg * size).div_(denom))
                else:
                    p.addcdiv_(exp_avg, denom, value=size)


def stacked_optimizer(params: list[Tensor], members: Sequence[MemberOptimizer]) -> StackedOptimizer:
    name = members[0].name
    if name == "sgd":
        return StackedSGD(params, members)
    if name in ("adam", "adamw"):
        return StackedAdam(params, members, decoupled=name == "adamw")
    raise ValueError(f"no stacked optimizer for {name!r} (sgd, adam, adamw)")
