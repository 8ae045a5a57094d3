"""The LR over a trial's planned updates: linear warmup, then constant, cosine or linear decay, or
warmup-stable-decay (wsd: the peak held, then a 1-sqrt decay over the last `decay_fraction`)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Linear warmup, then constant / cosine / linear decay ending exactly at the last update, or
    wsd: constant at the peak until `decay_start`, then 1-sqrt down to the final value, reached
    exactly at the last planned update (Hägele et al. 2024)."""

    peak_lr: float
    planned_updates: int
    warmup_updates: int = 0
    shape: str = "cosine"  # constant | cosine | linear | wsd
    final_fraction: float = 0.0
    decay_updates: int = 0  # wsd only: the last updates of the plan, which decay

    @classmethod
    def build(cls, peak_lr: float, planned_updates: int, warmup_fraction: float, shape: str,
              final_fraction: float, decay_fraction: float | None = None) -> Schedule:
        warmup = min(int(round(warmup_fraction * planned_updates)), max(planned_updates - 1, 0))
        decay = 0
        if shape == "wsd":  # at least one decaying update; warmup comes first when both want the same ones
            decay = min(max(1, int(round((decay_fraction or 0.0) * planned_updates))), planned_updates - warmup)
        return cls(peak_lr, planned_updates, warmup, shape, final_fraction, decay)

    @property
    def decay_start(self) -> int:
        """The first update index whose LR is below the peak after warmup (wsd); the plan's end for
        the other shapes, whose decay is spread over the whole plan (`cosine`, `linear`) or absent."""
        if self.shape == "wsd":
            return self.planned_updates - self.decay_updates
        return self.planned_updates

    def lr_at(self, update: int) -> float:
        """LR for update index `update` (0-based); the last planned index gets the final value."""
        if update < self.warmup_updates:
            return self.peak_lr * (update + 1) / (self.warmup_updates + 1)
        if self.shape == "constant":
            return self.peak_lr
        if self.shape == "wsd":
            start = self.decay_start
            if update < start:
                return self.peak_lr
            progress = min((update - start + 1) / self.decay_updates, 1.0)
            return cooled(self.peak_lr, progress, self.final_fraction)
        # The first update after warmup runs at the peak, the last planned one at the final value.
        last = self.planned_updates - 1 - self.warmup_updates
        progress = min((update - self.warmup_updates) / last, 1.0) if last > 0 else 1.0
        if self.shape == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = 1.0 - progress
        return self.peak_lr * (self.final_fraction + (1.0 - self.final_fraction) * factor)


def cooled(start_lr: float, progress: float, final_fraction: float = 0.0) -> float:
    """The 1-sqrt cooldown at `progress` in (0, 1]: start_lr x (1 - sqrt(progress)), from
    start_lr down to final_fraction x start_lr at progress 1. Hägele et al. 2024 found 1-sqrt
    better than a linear cooldown of the same length (it stays near the peak longer, then drops)."""
    factor = 1.0 - math.sqrt(progress)
    return start_lr * (final_fraction + (1.0 - final_fraction) * factor)
