"""The bmm path's update without autograd: a group of K > 1 members whose model is linear layers
and common activations, trained on cross entropy, gets its forward, loss and gradients from the
kernels autograd itself would call, in the order it calls them, with no graph.

On the CPU an update of a small fused MLP is a few large matrix products and many small steps:
autograd's graph, its engine, a Python `backward` per layer and the accumulation of each gradient
cost as much as the products of the layers after the first (at K = 8 and 784 inputs, a sixth of
the update). Here each gradient is one kernel whose result becomes the parameter's `.grad`.

What it computes, member by member, is what the autograd path (`linear.StackedLinear` and
`batched.stacked_cross_entropy` under `backward()`) computes, bit for bit: the same kernels on
the same operands (tests/test_fused.py compares them). What takes it (`direct_fits`): the bmm
path's layers, each activation one of `BACKWARD`'s, a flatten only before the first linear layer,
cross entropy on class indices (the direct form of `batched`), and fp32 (no autocast). Anything
else, and a group of one (its solo run's own kernels, `linear.py`), goes through autograd.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from objectives.training.fused.batched import stacked_cross_entropy
from objectives.training.fused.model import FusedModel, LinearStack

aten = torch.ops.aten

# each activation's gradient as autograd computes it (torch's derivatives.yaml): from the
# gradient of its output, its input and its output
BACKWARD: dict[type, Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]] = {
    nn.ReLU: lambda m, grad, x, y: aten.threshold_backward(grad, y, 0),
    nn.LeakyReLU: lambda m, grad, x, y: aten.leaky_relu_backward(grad, x, m.negative_slope, False),
    nn.GELU: lambda m, grad, x, y: aten.gelu_backward(grad, x, approximate=m.approximate),
    nn.SiLU: lambda m, grad, x, y: aten.silu_backward(grad, x),
    nn.Tanh: lambda m, grad, x, y: aten.tanh_backward(grad, y),
    nn.Sigmoid: lambda m, grad, x, y: aten.sigmoid_backward(grad, y),
    nn.Identity: lambda m, grad, x, y: grad,
}


def direct_fits(model: FusedModel, loss: Callable, precision: str) -> bool:
    """Whether this group's updates can skip autograd (module docstring)."""
    if not isinstance(model, LinearStack) or loss is not stacked_cross_entropy or precision != "fp32":
        return False
    seen_linear = False
    for op in model.ops:
        if op[0] == "linear":
            seen_linear = True
        elif op[0] == "flatten":
            if seen_linear:
                return False
        elif type(op[1]) not in BACKWARD or getattr(op[1], "inplace", False):
            return False
    return True


def train_step(model: LinearStack, x: Tensor, y: Tensor, scale: float = 1.0) -> Tensor:
    """Forward, each member's mean cross entropy times `scale` and every parameter's gradient of
    it, added to its `.grad` (set where there is none, as autograd accumulates), for a group of
    K > 1 on its stacked batch x [K, B, ...], y [K, B]; returns the scaled losses, [K]."""
    params = model.weights.params
    saved: list[tuple] = []  # per op, what its backward needs
    with torch.no_grad():
        h = x
        for op in model.ops:
            if op[0] == "linear":
                weight, bias = params[op[1]], None if op[2] is None else params[op[2]]
                saved.append((op, h))
                w = weight.transpose(1, 2)
                h = torch.bmm(h, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, w)
            elif op[0] == "flatten":
                h = h.flatten(2)
            else:
                out = op[1](h)
                saved.append((op, h, out))
                h = out
        # stacked_cross_entropy's forward, and the gradient `losses.sum().backward()` sends back
        # through its mean, nll_loss and log_softmax
        k, b = y.shape
        logp = torch.log_softmax(h.reshape(k * b, h.shape[-1]), 1)
        targets = y.reshape(k * b, 1)
        losses = -logp.gather(1, targets).view(k, b).mean(dim=1)
        if scale != 1.0:
            losses = losses * scale
        # (losses * scale).sum().backward(): MulBackward's scale (1 * scale), then MeanBackward's / b
        share = torch.full((), scale, dtype=logp.dtype, device=logp.device) / b
        grad_out = torch.zeros_like(logp).scatter_(1, targets, (-share).expand(targets.shape))
        grad = aten._log_softmax_backward_data(grad_out, logp, 1, logp.dtype).view(h.shape)
        first = next(i for i, entry in enumerate(saved) if entry[0][0] == "linear")  # no gradient below it
        for i in range(len(saved) - 1, first - 1, -1):
            entry = saved[i]
            op = entry[0]
            if op[0] == "linear":
                weight = params[op[1]]
                accumulate(weight, torch.bmm(grad.transpose(1, 2), entry[1]))
                if op[2] is not None:
                    accumulate(params[op[2]], grad.sum(1))
                if i > first:
                    grad = torch.bmm(grad, weight)
            else:
                grad = BACKWARD[type(op[1])](op[1], grad, entry[1], entry[2])
    return losses


def accumulate(param: Tensor, grad: Tensor) -> None:
    """As autograd's AccumulateGrad: the gradient itself where there is none, else added in place."""
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)


def member_gradients(model: FusedModel, loss: Callable, x: Tensor, y: Tensor, direct: bool,
                     autocast: contextlib.AbstractContextManager | None = None, accumulation: int = 1) -> Tensor:
    """One fused update's forward and backward on the stacked batch x [K, B, ...], y [K, B, ...]:
    each member's loss, [K], and every parameter's `.grad`. Without autograd where the group allows
    it (`direct`, from `direct_fits`) and has more than one member, else through autograd under
    `autocast`. `accumulation` > 1: in that many micro-batches along each member's batch (sizes
    as `Step` splits a solo trial's), each loss weighted by its share, the gradients summed."""
    n = x.shape[1]
    parts = min(accumulation, n)
    if parts == 1:
        return gradients_of(model, loss, x, y, direct, autocast, 1.0)
    losses = torch.zeros(model.weights.size, device=x.device)
    for xp, yp in zip(x.tensor_split(parts, dim=1), y.tensor_split(parts, dim=1), strict=True):
        losses += gradients_of(model, loss, xp, yp, direct, autocast, xp.shape[1] / n).detach()
    return losses


def gradients_of(model: FusedModel, loss: Callable, x: Tensor, y: Tensor, direct: bool,
                 autocast: contextlib.AbstractContextManager | None, scale: float) -> Tensor:
    if direct and model.weights.size > 1:
        return train_step(model, x, y, scale)
    with autocast or contextlib.nullcontext():
        losses = loss(model(x), y)
        if scale != 1.0:
            losses = losses * scale
    losses.sum().backward()
    return losses
