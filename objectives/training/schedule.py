"""The LR over a trial's planned updates: linear warmup, then constant, cosine or linear decay."""

from __future__ import annotations

import math
from dataclasses import dataclass


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
