"""One linear layer for K members at once (the bmm path), its weights stacked as `nn.Linear`'s,
[K, out, in], its biases [K, out].

What the input is (`Layout`):

- `solo` (K = 1): [B, ...], one member's: `nn.Linear`'s own kernel on the weights viewed as one
  member's, so a group of one is its solo run bit for bit;
- `stacked`: [K, B, ...], each member's own batch: one `baddbmm`, x @ W^T + b, whose backward
  (`StackedLinear`, in fp32; under bf16 autocast autograd's own, whose graph holds the casts)
  runs each member's products as `nn.Linear`'s backward runs them (the weight's
  gradient as grad^T @ x, in the weight's own layout; autograd's `bmm` backward would give it as
  x^T @ grad, [K, in, out], and copy it into the weight's layout every update: on the CPU, at
  K = 16 and 784 inputs, 3 MB whose fresh pages cost as much as the layer);
- `shared`: [B, ...], the input every member sees (evaluation's), until the first linear layer,
  which is one `nn.Linear` kernel over the members' weights side by side, [B, in] by
  [in, K * out]: one large matrix product, not K copies of the input. After it, `stacked`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Layout = Literal["solo", "stacked", "shared"]


def stacked(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x @ W^T + b for each member, x [K, B, in], W [K, out, in], b [K, out] or None."""
    w = weight.transpose(1, 2)
    return torch.bmm(x, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, w)


class StackedLinear(torch.autograd.Function):
    """x @ W^T + b for each member, x [K, B, in], W [K, out, in], b [K, out] or None."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # forward(ctx, ...), not setup_context: `apply` then skips binding the arguments by
        # `inspect.signature`, tens of microseconds a call
        ctx.save_for_backward(x, weight)
        ctx.with_bias = bias is not None
        return stacked(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x = torch.bmm(grad, weight) if needs[0] else None
        grad_weight = torch.bmm(grad.transpose(1, 2), x) if needs[1] else None
        grad_bias = grad.sum(1) if ctx.with_bias and needs[2] else None
        return grad_x, grad_weight, grad_bias


def start(x: Tensor, shared: bool, k: int) -> tuple[Tensor, Layout]:
    """The model's input, one batch for all members (`shared`) or one each, and its layout."""
    if k == 1:
        return (x if shared else x[0]), "solo"
    return x, ("shared" if shared else "stacked")


def linear(x: Tensor, layout: Layout, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Layout]:
    """The layer of every member on `x`; the output and its layout."""
    if layout == "solo":
        one_bias = None if bias is None else bias.view(bias.shape[1:])
        return F.linear(x, weight.view(weight.shape[1:]), one_bias), "solo"
    if layout == "shared":
        k, out = weight.shape[0], weight.shape[1]
        y = F.linear(x, weight.reshape(k * out, -1), None if bias is None else bias.reshape(-1))
        return y.view(len(x), k, out).transpose(0, 1), "stacked"
    if torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
        return StackedLinear.apply(x, weight, bias), "stacked"
    return stacked(x, weight, bias), "stacked"  # under autocast: autograd's own backward, its casts in the graph


def flatten(x: Tensor, layout: Layout) -> Tensor:
    """`nn.Flatten()` of each member's examples."""
    return x.flatten(1 if layout in ("solo", "shared") else 2)


def finish(x: Tensor, layout: Layout, k: int) -> Tensor:
    """The output as [K, B, ...]."""
    if layout == "solo":
        return x.unsqueeze(0)
    if layout == "shared":
        return x.expand(k, *x.shape)
    return x
