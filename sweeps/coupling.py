"""How the learning rate follows the batch size, and its schedule over a trial's planned updates.

Rules (REFERENCE.md): none, linear (Goyal et al.), sqrt (Krizhevsky; Hoffer et al.) and
adam_sqrt (Malladi et al.: sqrt LR plus rescaled betas and eps for Adam-family optimizers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCALE = {
    "none": lambda k: 1.0,
    "linear": lambda k: k,
    "sqrt": math.sqrt,
    "adam_sqrt": math.sqrt,
}


@dataclass(frozen=True)
class Coupled:
    """The optimizer settings one trial trains with after coupling."""

    lr: float  # effective peak LR
    betas: tuple[float, float] | None = None  # adam_sqrt only
    eps: float | None = None  # adam_sqrt only


def effective_lr(rule: str, base_lr: float, batch_size: int, reference_batch_size: int) -> float:
    return base_lr * SCALE[rule](batch_size / reference_batch_size)


def couple(
    rule: str,
    base_lr: float,
    batch_size: int,
    reference_batch_size: int,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Coupled:
    lr = effective_lr(rule, base_lr, batch_size, reference_batch_size)
    if rule != "adam_sqrt":
        return Coupled(lr)
    k = batch_size / reference_batch_size
    # (1 - beta) scales by k; clamp so a large k cannot push beta below 0 or to 1.
    scaled = tuple(min(max(1.0 - k * (1.0 - b), 0.0), 0.9999) for b in betas)
    return Coupled(lr, betas=scaled, eps=eps / math.sqrt(k))


@dataclass(frozen=True)
class Schedule:
    """Linear warmup, then constant / cosine / linear decay ending exactly at the last update."""

    peak_lr: float
    planned_updates: int
    warmup_updates: int = 0
    shape: str = "cosine"  # constant | cosine | linear
    final_fraction: float = 0.0

    @classmethod
    def build(cls, peak_lr: float, planned_updates: int, warmup_fraction: float, shape: str,
              final_fraction: float) -> Schedule:
        warmup = min(int(round(warmup_fraction * planned_updates)), max(planned_updates - 1, 0))
        return cls(peak_lr, planned_updates, warmup, shape, final_fraction)

    def lr_at(self, update: int) -> float:
        """LR for update index `update` (0-based); the last planned index gets the final value."""
        if update < self.warmup_updates:
            return self.peak_lr * (update + 1) / (self.warmup_updates + 1)
        if self.shape == "constant":
            return self.peak_lr
        # The first update after warmup runs at the peak, the last planned one at the final value.
        last = self.planned_updates - 1 - self.warmup_updates
        progress = min((update - self.warmup_updates) / last, 1.0) if last > 0 else 1.0
        if self.shape == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = 1.0 - progress
        return self.peak_lr * (self.final_fraction + (1.0 - self.final_fraction) * factor)
