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
measurements of one evaluation window: each point of the curve then stands for its window, as the
evaluation beside it does; a shorter memory only adds noise, a longer one lags.

Everything in the hot path stays on the device: the averages are one 2-vector, read (one host
sync) only at evaluation, which syncs anyway.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

# Updates between two measurements, at most. A measurement costs a few fused ops over the
# gradients (and, for a batch that is not split, the launches of a second, half-size pass): a fixed
# cost, felt most by a tiny model; these keep the digits MLP of `benchmarks/trainer.py` within 5%.
SPLIT_EVERY = 16
UNSPLIT_EVERY = 64
PER_WINDOW = 4  # measurements per evaluation window at least: a short window measures more often
MIN_SPAN = 8  # measurements the averages span at least, even across evaluation windows


def measure_every(window_updates: int, split: bool) -> int:
    """Updates between two measurements: `SPLIT_EVERY` or `UNSPLIT_EVERY`, fewer when the
    evaluation window of `window_updates` updates would otherwise get under `PER_WINDOW`
    (a trial of few updates, such as a large batch under an examples budget, whose updates are
    each costlier, so the fixed cost of a measurement weighs less)."""
    most = SPLIT_EVERY if split else UNSPLIT_EVERY
    return max(1, min(most, window_updates // PER_WINDOW))


class NoiseScale:
    """Exponential moving averages of the tr(Sigma) and |G|^2 estimates, on the device."""

    def __init__(self, device: torch.device, window_updates: int, split: bool):
        """`window_updates`: the updates of one evaluation window; `split`: whether the batch is
        split into micro-batches. The averages span the measurements of one window, at least
        `MIN_SPAN` (decay 1 - 2 / (span + 1): about the weighted mean of the last `span`)."""
        self.every = measure_every(window_updates, split)
        span = max(MIN_SPAN, window_updates // self.every)
        self.decay = 1.0 - 2.0 / (span + 1)
        self.averages = torch.zeros(2, device=device)  # [tr(Sigma), |G|^2]
        self.device = device
        self.measurements = 0
        self.updates = 0
        self.weights: dict[tuple[int, tuple[int, ...]], Tensor] = {}

    def due(self) -> bool:
        """Whether this update is measured (one in `every`)."""
        self.updates += 1
        return self.updates % self.every == 0

    def add(self, norms: Sequence[Sequence[Tensor]], batch: int) -> None:
        """One update's estimates. `norms[i]`: the per-tensor gradient norms (`_foreach_norm`) of
        micro-batch i, whose loss was weighted by its share of the `batch` examples, as
        `batches.split` cuts it; `norms[-1]`: those of the update's whole gradient. Four ops
        whatever the number of micro-batches: the estimates are one fixed linear map of the
        squared norms, applied with the average's decay in one `addmv_`."""
        if not any(len(group) for group in norms):
            return
        counts, squares = squared_norms(norms)
        weights = self.weights.get((batch, counts))
        if weights is None:
            weights = self.weights[(batch, counts)] = estimate_weights(batch, counts).to(self.device)
        self.averages.addmv_(weights, squares, beta=self.decay, alpha=1 - self.decay)
        self.measurements += 1

    def twin(self) -> NoiseScale:
        """Averages that go on as these would, apart from them (a horizon's branch in a fused group)."""
        twin = copy.copy(self)
        twin.averages = self.averages.clone()
        return twin

    def value(self) -> float | None:
        """B_simple from the averages so far; None before any measurement, or while the |G|^2
        average is not positive (the gradient is lost in the noise) or the result not finite."""
        if self.measurements == 0:
            return None
        return b_simple(*self.averages.tolist())


def b_simple(trace: float, gradient_sq: float) -> float | None:
    """tr(Sigma) / |G|^2 from the averaged estimates; None while the |G|^2 average is not positive
    (the gradient is lost in the noise) or the ratio is not finite."""
    if gradient_sq <= 0 or not math.isfinite(trace / gradient_sq):
        return None
    return trace / gradient_sq


def estimates(norms: Sequence[Sequence[Tensor]], batch: int) -> Tensor:
    """One update's [tr(Sigma), |G|^2] estimates from its norms (as `NoiseScale.add` takes them),
    unaveraged: for a caller that averages over updates of its own choosing."""
    counts, squares = squared_norms(norms)
    return estimate_weights(batch, counts).to(squares.device) @ squares


def squared_norms(norms: Sequence[Sequence[Tensor]]) -> tuple[tuple[int, ...], Tensor]:
    """How many norms each group holds, and all of them squared in one float32 vector: the
    estimates are a fixed linear map of it (`estimate_weights`)."""
    counts = tuple(len(group) for group in norms)
    return counts, torch.stack([norm for group in norms for norm in group]).float().square()


def mean_noise_scale(updates: Sequence[Tensor]) -> float | None:
    """B_simple from the plain mean of several updates' `estimates` (None: none, or not measurable)."""
    return b_simple(*torch.stack(list(updates)).mean(0).tolist()) if updates else None


def micro_sizes(batch: int, parts: int) -> list[int]:
    """The sizes `tensor_split` (and so `batches.split`) gives: the first `batch % parts` one larger."""
    base, extra = divmod(batch, parts)
    return [base + 1] * extra + [base] * (parts - extra)


def estimate_weights(batch: int, counts: tuple[int, ...]) -> Tensor:
    """The 2 x sum(counts) map from squared per-tensor norms to [tr(Sigma), |G|^2] (module doc).

    A micro-batch of b_i examples enters the sum with its loss weighted b_i / B, so its own
    gradient's squared norm is (B / b_i)^2 times what was measured; s averages those."""
    sizes = micro_sizes(batch, len(counts) - 1)
    parts = len(sizes)
    inverse_small = sum(1.0 / b for b in sizes) / parts
    spread = inverse_small - 1.0 / batch
    trace_row: list[float] = []
    gradient_row: list[float] = []
    for size, count in zip(sizes, counts, strict=False):
        w = (batch / size) ** 2 / parts  # this micro-batch's share of s
        trace_row += [w / spread] * count
        gradient_row += [-w / (batch * spread)] * count
    trace_row += [-1.0 / spread] * counts[-1]  # S, the whole batch's gradient
    gradient_row += [inverse_small / spread] * counts[-1]
    return torch.tensor([trace_row, gradient_row], dtype=torch.float32)


class GradientParts:
    """Keeps each micro-batch's gradient apart long enough to take its norm, then adds it to the
    sum of the earlier ones: the sum the optimizer steps on is the same as plain accumulation.

    Before each micro-batch after the first, the running sum is moved aside (the `.grad`
    references, no copy); backward then writes that micro-batch's gradient alone into fresh
    `.grad` tensors, its norm is read, and the running sum is added back in place. Plain
    accumulation does the same addition inside autograd, so the extra work is one fused norm per
    micro-batch plus one for the sum: no extra pass, and cheaper than the norm of the difference
    between consecutive running sums, which needs a copy of the previous sum each time."""

    def __init__(self, params: Sequence[nn.Parameter]):
        self.params = params
        self.earlier: list[Tensor | None] = []

    def set_aside(self) -> None:
        self.earlier = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None

    def grads(self) -> list[Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    def norms(self) -> list[Tensor]:
        """The norm of each gradient tensor there is, in one fused op."""
        grads = self.grads()
        return torch._foreach_norm(grads) if grads else []

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
