"""The simple gradient noise scale B_simple = tr(Sigma) / |G|^2, measured while a trial trains.

McCandlish et al. 2018 (docs/background.md, "Gradient noise scale and critical batch size"): a
gradient over b examples drawn from the data has E |G_b|^2 = |G|^2 + tr(Sigma) / b, so the squared
norms of two gradients taken at the same weights over different batch sizes give unbiased
estimates of |G|^2 and tr(Sigma). Here the two sizes come from one update at no extra forward or
backward pass: the micro-batches of a split update are the small batches and their weighted sum,
the update's own gradient, is the big one.

With micro-batches of sizes b_1..b_k (they may differ by one) summing to B, s the mean of their
squared gradient norms, S the squared norm of the whole batch's gradient and c = mean(1 / b_i):
E s = |G|^2 + c tr(Sigma) and E S = |G|^2 + tr(Sigma) / B, hence

    tr(Sigma) ~ (s - S) / (c - 1/B),     |G|^2 ~ (c S - s / B) / (c - 1/B),

which for equal micro-batches are the background document's two-batch formulas. Each estimate is
noisy (|G|^2 may come out negative), so the numerator and the denominator are averaged separately
(an exponential moving average over measured updates) and divided only when read. Both averages
start at zero and grow alike, so their ratio needs no bias correction. The averages span about the
measurements of one evaluation window (`span_of`): each point of the curve then stands for its
window, as the evaluation beside it does; a shorter memory only adds noise, a longer one lags.

Everything in the hot path stays on the device: the averages are 0-d tensors, read (one host
sync) only at evaluation, which syncs anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

UNSPLIT_EVERY = 8  # a batch that is not split is split in two halves on every 8th update only


def span_of(window_updates: int, split: bool) -> int:
    """Measured updates in an evaluation window of `window_updates` updates: every update of a
    split batch, every `UNSPLIT_EVERY`th of one that is not."""
    return max(1, window_updates if split else window_updates // UNSPLIT_EVERY)


def squared_norm(grads: Sequence[Tensor]) -> Tensor:
    """|g|^2 over every gradient tensor: one fused `_foreach_norm` read of the gradients."""
    if not grads:
        return torch.zeros(())
    return torch.stack(torch._foreach_norm(grads)).square().sum()


class NoiseScale:
    """Exponential moving averages of the |G|^2 and tr(Sigma) estimates, on the device."""

    def __init__(self, device: torch.device, span: int):
        """`span`: the averages' memory in measured updates (decay 1 - 2 / (span + 1), the
        weighted mean of the last `span` or so measurements)."""
        self.decay = 1.0 - 2.0 / (span + 1)
        self.gradient_sq = torch.zeros((), device=device)  # EMA of the |G|^2 estimates
        self.trace = torch.zeros((), device=device)  # EMA of the tr(Sigma) estimates
        self.measurements = 0
        self.unsplit_updates = 0

    def due_unsplit(self) -> bool:
        """Whether this update of a batch that is not split is one measured (split in halves)."""
        self.unsplit_updates += 1
        return self.unsplit_updates % UNSPLIT_EVERY == 0

    def add(self, small_sq: Tensor, inverse_small: float, big_sq: Tensor, big: int) -> None:
        """One update's two-batch estimate: `small_sq` the mean squared norm of its micro-batch
        gradients, `inverse_small` the mean of 1 / (micro-batch size), `big_sq` the squared norm
        of the whole batch's gradient over `big` examples."""
        spread = inverse_small - 1.0 / big
        trace = (small_sq - big_sq) / spread
        gradient_sq = (inverse_small * big_sq - small_sq / big) / spread
        keep = self.decay
        self.trace.mul_(keep).add_(trace, alpha=1 - keep)
        self.gradient_sq.mul_(keep).add_(gradient_sq, alpha=1 - keep)
        self.measurements += 1

    def value(self) -> float | None:
        """B_simple from the averages so far; None before any measurement, or while the |G|^2
        average is not positive (the gradient is lost in the noise) or the result not finite."""
        if self.measurements == 0:
            return None
        gradient_sq, trace = self.gradient_sq.item(), self.trace.item()
        if gradient_sq <= 0 or not math.isfinite(trace / gradient_sq):
            return None
        return trace / gradient_sq


class GradientParts:
    """Keeps each micro-batch's gradient apart long enough to take its norm, then adds it to the
    sum of the earlier ones: the sum the optimizer steps on is the same as plain accumulation.

    Before each micro-batch after the first, the running sum is moved aside (the `.grad`
    references, no copy); backward then writes that micro-batch's gradient alone into fresh
    `.grad` tensors, its norm is read, and the running sum is added back in place. Plain
    accumulation does the same addition inside autograd, so the extra work is one fused norm per
    micro-batch plus one for the sum; no copy of the gradients and no extra pass."""

    def __init__(self, params: Sequence[nn.Parameter]):
        self.params = params
        self.earlier: list[Tensor | None] = []

    def set_aside(self) -> None:
        self.earlier = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None

    def grads(self) -> list[Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    def add_back(self) -> None:
        fresh, earlier = [], []
        for p, before in zip(self.params, self.earlier, strict=True):
            if before is None:
                continue
            if p.grad is None:  # a parameter this micro-batch did not reach
                p.grad = before
            else:
                fresh.append(p.grad)
                earlier.append(before)
        if fresh:
            torch._foreach_add_(fresh, earlier)
        self.earlier = []
