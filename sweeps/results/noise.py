"""Critical batch size from the gradient noise scale the trials measured (`measure: {noise_scale: true}`).

Each such trial records `noise_scale`: B_simple = tr(Sigma) / |G|^2 at its last evaluation
(McCandlish et al. 2018). B_simple grows as training approaches the optimum, and depends on where
in the search space a trial was, so the estimate is the median over the trials near the best (those
that reached the report's target), with their range as its spread; when fewer than 3 reached it,
over every complete trial that measured it, and the sentence says so.

Noise scale is only a proxy for the critical batch size (Merrill et al. 2025): `disagreement`
flags when it and the critical batch size fitted from steps to target differ by more than 2x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial

from sweeps.trial.record import TrialRecord

MIN_NEAR_BEST = 3
DISAGREE_FACTOR = 2.0


@dataclass(frozen=True)
class NoiseEstimate:
    median: float
    low: float
    high: float
    n: int
    basis: str  # which trials: "reaching the target" or "complete"

    def sentence(self) -> str:
        return (f"critical batch size from the gradient noise scale: B_simple ~ {self.median:.0f} "
                f"(median; range [{self.low:.0f}, {self.high:.0f}] over {self.n} {self.basis} trials)")


def noise_scale_of(trial: FrozenTrial) -> float | None:
    value = TrialRecord.of(trial).noise_scale
    return float(value) if value is not None and math.isfinite(value) and value > 0 else None


def estimate(complete: list[FrozenTrial], target: float | None, maximize: bool) -> NoiseEstimate | None:
    """Median and range of `noise_scale` over the complete trials that reached `target` (all
    complete trials that measured it when fewer than 3 of those did); None when none measured it."""
    measured = [(t, v) for t in complete if (v := noise_scale_of(t)) is not None]
    if not measured:
        return None
    sign = 1.0 if maximize else -1.0
    near = [v for t, v in measured if target is not None and sign * (t.value - target) >= 0]
    values, basis = (near, "reaching the target") if len(near) >= MIN_NEAR_BEST else (
        [v for _, v in measured], "complete")
    return NoiseEstimate(float(np.median(values)), min(values), max(values), len(values), basis)


def disagreement(from_steps: float | None, from_noise: NoiseEstimate | None) -> str | None:
    """A warning when the two estimates of B_crit differ by more than 2x; None when they agree or
    one is missing."""
    if from_steps is None or from_noise is None or from_steps <= 0:
        return None
    ratio = max(from_steps, from_noise.median) / min(from_steps, from_noise.median)
    if ratio <= DISAGREE_FACTOR:
        return None
    return (f"the two estimates of B_crit differ by {ratio:.1f}x ({from_steps:.0f} from steps to target, "
            f"{from_noise.median:.0f} from the noise scale): noise scale is only a proxy for critical batch "
            f"size (Merrill et al. 2025); trust the steps-to-target fit where it has enough batch sizes")
