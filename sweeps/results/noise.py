"""Critical batch size from the gradient noise scale the trials measured (`measure: {noise_scale: true}`).

Each such trial records `noise_scale_curve`: B_simple = tr(Sigma) / |G|^2 at each evaluation
(McCandlish et al. 2018). B_simple is not one number per trial: it grows as training approaches
the optimum (|G|^2 shrinks faster than tr(Sigma)), often several-fold, and without bound on a
task trained to its noise floor. So which point of the curve stands for the trial is a choice,
and the report names it:

- the statistic is B_simple at the first evaluation that reached the report's target (`AT_TARGET`):
  B_crit is the batch size past which reaching a given loss stops paying, and the noise scale that
  predicts it is the one measured at that loss (McCandlish et al. 2018), the same target the
  steps-to-target fit uses, so the two estimates answer one question;
- when fewer than 3 trials reached the target, each trial's last value (`AT_END`), which
  overstates B_crit for any earlier target, and the sentence says so.

The estimate is the median over those trials, their range its spread. A range wider than
`WIDE_FACTOR` (10x) is undetermined: it is reported as such, never as a B_crit. A curve whose last
value differs from its first by more than `CHANGE_FACTOR` (2x) changes during training, and the
report says so with the early and late values.

Noise scale is only a proxy for the critical batch size (Merrill et al. 2025): `disagreement`
flags when it and the critical batch size fitted from steps to target differ by more than 2x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from optuna.trial import FrozenTrial

from sweeps.results.critical import WIDE_FACTOR, wide
from sweeps.trial.record import TrialRecord

MIN_NEAR_BEST = 3
DISAGREE_FACTOR = 2.0
CHANGE_FACTOR = 2.0  # a curve whose last value is this far from its first changes during training
AT_TARGET = "at the first evaluation that reached the target"
AT_END = "at the last evaluation"
WHY = ("why this statistic: B_simple grows as training nears the optimum, and the value that predicts B_crit "
       "is the one measured at the loss to be reached (McCandlish et al. 2018), here the target of the "
       "steps-to-target fit")
FALLBACK = (f"; fewer than {MIN_NEAR_BEST} trials reached that target, so each trial's last value stands in, "
            "which overstates B_crit for any earlier target")


@dataclass(frozen=True)
class NoiseCurve:
    """One trial's B_simple at each measured evaluation, against the examples it had seen."""

    trial: int
    batch_size: int | None
    examples: list[float | None]  # None: the trial's record cannot convert its steps to examples
    values: list[float]
    reached: int | None  # index of the first evaluation that reached the target; None: never

    @property
    def at_target(self) -> float | None:
        return None if self.reached is None else self.values[self.reached]

    @property
    def change(self) -> float:
        """How many times its last value is its first's, or the inverse, whichever is above 1."""
        return max(self.values[0], self.values[-1]) / min(self.values[0], self.values[-1])


@dataclass(frozen=True)
class NoiseEstimate:
    median: float
    low: float
    high: float
    n: int
    statistic: str  # which point of each curve: `AT_TARGET` or `AT_END`
    curves: list[NoiseCurve] = field(default_factory=list)

    @property
    def determined(self) -> bool:
        return not wide(self.low, self.high)

    @property
    def changed(self) -> int:
        """Trials whose curve changed by more than `CHANGE_FACTOR` from first to last evaluation."""
        return sum(c.change > CHANGE_FACTOR for c in self.curves)

    @property
    def early(self) -> float:
        return float(np.median([c.values[0] for c in self.curves]))

    @property
    def late(self) -> float:
        return float(np.median([c.values[-1] for c in self.curves]))

    def spread(self) -> str:
        return f"B_simple {self.statistic} spans [{self.low:.0f}, {self.high:.0f}] over {self.n} trials"

    def headline(self) -> str:
        """A figure's note: the estimate, or why there is none."""
        if not self.determined:
            return f"undetermined: B_simple {self.statistic} spans [{self.low:.0f}, {self.high:.0f}]"
        return f"B_simple ~ {self.median:.0f} (median {self.statistic})"

    def sentence(self) -> str:
        head = "critical batch size from the gradient noise scale: "
        if not self.determined:
            return head + f"undetermined ({self.spread()}, more than {WIDE_FACTOR:g}x)"
        return head + f"B_simple ~ {self.median:.0f} (median {self.statistic}; range [{self.low:.0f}, " \
                      f"{self.high:.0f}] over {self.n} trials)"

    def lines(self) -> list[str]:
        """The sentence, the statistic's reason and, when the curves move, how much."""
        lines = [self.sentence(), WHY + (FALLBACK if self.statistic == AT_END else "")]
        if self.changed:
            lines.append(f"B_simple changes during training: by more than {CHANGE_FACTOR:g}x in {self.changed} of "
                         f"{len(self.curves)} trials (median {self.early:.0f} at the first evaluation, "
                         f"{self.late:.0f} at the last)")
        return lines


def curve_of(trial: FrozenTrial, target: float | None, maximize: bool, step_unit: str) -> NoiseCurve | None:
    """The trial's measured curve (its last value alone for a trial that stored no curve); None
    when it measured nothing usable."""
    record = TrialRecord.of(trial)
    points = record.noise_scale_curve or ([[max(trial.intermediate_values, default=0), record.noise_scale]]
                                          if record.noise_scale is not None else [])
    points = [(step, float(v)) for step, v in points if v is not None and math.isfinite(v) and v > 0]
    if not points:
        return None
    ratio, batch = record.updates_per_step(step_unit), record.batch_size
    examples = [step * ratio * batch if ratio and batch else None for step, _ in points]
    sign = 1.0 if maximize else -1.0
    reached = None if target is None else next(
        (s for s in sorted(trial.intermediate_values)
         if sign * (trial.intermediate_values[s] - target) >= 0), None)
    index = None if reached is None else next((i for i, (step, _) in enumerate(points) if step >= reached), None)
    return NoiseCurve(trial.number, batch, examples, [v for _, v in points], index)


def estimate(complete: list[FrozenTrial], target: float | None, maximize: bool,
             step_unit: str = "updates") -> NoiseEstimate | None:
    """Median and range of B_simple where each complete trial reached `target` (each one's last
    value when fewer than 3 reached it); None when no trial measured it."""
    curves = [c for t in complete if (c := curve_of(t, target, maximize, step_unit)) is not None]
    if not curves:
        return None
    at_target = [c.at_target for c in curves if c.at_target is not None]
    values, statistic = (at_target, AT_TARGET) if len(at_target) >= MIN_NEAR_BEST else (
        [c.values[-1] for c in curves], AT_END)
    return NoiseEstimate(float(np.median(values)), min(values), max(values), len(values), statistic, curves)


def disagreement(from_steps: float | None, from_noise: NoiseEstimate | None) -> str | None:
    """A warning when the two estimates of B_crit differ by more than 2x; None when they agree, one
    is missing or the noise scale's is undetermined."""
    if from_steps is None or from_noise is None or from_steps <= 0 or not from_noise.determined:
        return None
    ratio = max(from_steps, from_noise.median) / min(from_steps, from_noise.median)
    if ratio <= DISAGREE_FACTOR:
        return None
    return (f"the two estimates of B_crit differ by {ratio:.1f}x ({from_steps:.0f} from steps to target, "
            f"{from_noise.median:.0f} from the noise scale): noise scale is only a proxy for critical batch "
            f"size (Merrill et al. 2025); trust the steps-to-target fit where it has enough batch sizes")
