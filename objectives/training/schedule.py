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
    decay_fraction: float = 0.0  # wsd only: what `decay_updates` was derived from (`for_length`)

    @classmethod
    def build(cls, peak_lr: float, planned_updates: int, warmup_fraction: float, shape: str,
              final_fraction: float, decay_fraction: float | None = None,
              warmup_updates: int | None = None) -> Schedule:
        """`warmup_updates`, when given, is the warmup in updates (absolute: the same for every
        length, as horizons need); otherwise it is `warmup_fraction` of the planned updates."""
        wanted = warmup_updates if warmup_updates is not None else int(round(warmup_fraction * planned_updates))
        warmup = min(wanted, max(planned_updates - 1, 0))
        decay = 0
        if shape == "wsd":  # at least one decaying update; warmup comes first when both want the same ones
            decay = min(max(1, int(round((decay_fraction or 0.0) * planned_updates))), planned_updates - warmup)
        return cls(peak_lr, planned_updates, warmup, shape, final_fraction, decay, decay_fraction or 0.0)

    def for_length(self, planned_updates: int) -> Schedule:
        """The schedule of a shorter dedicated run with the same absolute warmup (clamped as `build`
        does), peak, shape, final fraction and decay fraction: a horizon's."""
        return Schedule.build(self.peak_lr, planned_updates, 0.0, self.shape, self.final_fraction,
                              self.decay_fraction, warmup_updates=self.warmup_updates)

    def first_difference(self, other: Schedule) -> int:
        """The first update index at which the two schedules' LRs differ (the shorter plan's
        length when they agree all along it): where a horizon's branch leaves this run."""
        length = min(self.planned_updates, other.planned_updates)
        return next((u for u in range(length) if self.lr_at(u) != other.lr_at(u)), length)

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
