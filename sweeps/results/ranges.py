"""Axis ranges chosen from the informative values, so one bad trial cannot squash the band that matters.

The range spans the values inside Tukey's fences (1.5 interquartile ranges beyond the quartiles).
A value outside is drawn at the axis edge with a marker that says so, and its real value in the
label, rather than stretching the axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

FENCE = 1.5  # Tukey's: in interquartile ranges beyond the quartiles
PAD = 0.08  # of the span, each side, so markers on the edge stay inside the frame


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float

    def side(self, value: float | None) -> int:
        """-1 below the range, +1 above, 0 inside (or no value)."""
        if value is None or not math.isfinite(value):
            return 0
        return -1 if value < self.lo else 1 if value > self.hi else 0

    def edge(self, side: int) -> float:
        """Where a value beyond `side` is drawn: just inside the frame."""
        return self.lo if side < 0 else self.hi

    def clip(self, value: float) -> float:
        return min(max(value, self.lo), self.hi)


def robust_range(values: Iterable[float | None], fence: float = FENCE, pad: float = PAD) -> Range | None:
    """The range of the values within the fences, padded; None when no value is finite."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return None
    q1, q3 = np.quantile(finite, [0.25, 0.75])
    inside = finite[(finite >= q1 - fence * (q3 - q1)) & (finite <= q3 + fence * (q3 - q1))]
    lo, hi = float(inside.min()), float(inside.max())
    span = hi - lo or (abs(hi) * 0.02 or 1.0)
    return Range(lo - pad * span, hi + pad * span)
