"""LR advice that knows its limits: how the best LR moves with batch size, and which coupling rule,
if any, the data single out.

The fit takes the *good* trials of each batch size, those within a tolerance of that batch size's
best value, not one best trial per batch size: a batch size's single best trial can be a lucky or
a poor one, and its LR then decides the slope (issue 15: one B=512 trial at 0.947 with LR 6 gave
`B^1.77`). Batch sizes whose best falls far below the study's best are left out: their search never
found a good LR, so their LR says nothing about the optimum.

How the slope and its interval are computed (see `fit_lr_scaling`): one point per batch size, the
mean of log LR over its good trials, and an ordinary least-squares fit of those means on log B,
with a Student t interval on k - 2 degrees of freedom (k batch sizes). Trials of one batch size
share that batch size's optimum, so they are not independent draws around the line: fitting every
trial as its own point would count them as more evidence than they are and narrow the interval
falsely. The scatter of the per-batch-size means around the line carries both the noise of each
mean and how far the optimum departs from a power law, so the interval is honest about both; its
price is that few batch sizes give a wide interval (3 batch sizes: one degree of freedom, t = 12.7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

RULE_SLOPES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
TOLERANCE_OF_RANGE = 0.01  # default tolerance of a good trial: 1% of the study's range of finished values
FAR_OF_RANGE = 0.10  # a batch size is "far" below when its best trails the study's best by > 10% of the range
MIN_BATCH_SIZES = 3  # a slope and its interval need at least one degree of freedom


@dataclass(frozen=True)
class LrPoint:
    """One complete trial as the LR fit sees it."""

    batch_size: int
    lr: float  # effective peak LR, after coupling
    value: float
    trial: int


@dataclass
class LrFit:
    """log LR = intercept + slope * log B over the per-batch-size mean log LR of the good trials."""

    batch_sizes: list[int]  # the fitted batch sizes
    lrs: list[float]  # per fitted batch size: the geometric mean LR of its good trials
    trial_numbers: list[int]  # per fitted batch size: its best trial (`good` holds them all)
    tolerance: float = 0.0
    far: float = 0.0
    good: dict[int, list[LrPoint]] = field(default_factory=dict)
    left_out: dict[int, float] = field(default_factory=dict)  # batch size -> its best value (far below)
    study_best: float | None = None
    slope: float | None = None
    intercept: float | None = None
    half_width: float | None = None  # of the slope's interval (None: too few batch sizes)
    confidence: float = 0.95

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.slope is None or self.half_width is None:
            return None
        return self.slope - self.half_width, self.slope + self.half_width

    @property
    def covered_rules(self) -> list[str]:
        """The coupling rules whose slope lies inside the interval, by slope."""
        if self.interval is None:
            return []
        low, high = self.interval
        return [rule for rule, s in RULE_SLOPES.items() if low - 1e-9 <= s <= high + 1e-9]

    @property
    def rule(self) -> str | None:
        """The coupling rule the data single out: the only one inside the interval; else None."""
        covered = self.covered_rules
        return covered[0] if len(covered) == 1 else None

    def verdict(self) -> str:
        covered = self.covered_rules
        if self.interval is None:
            return "no rule: too few batch sizes"
        if len(covered) == 1:
            others = " and ".join(r for r in RULE_SLOPES if r != covered[0])
            return f"the {covered[0]} rule (the interval excludes {others})"
        if not covered:
            return f"outside every rule (slope {self.slope:.2f})"
        return f"undetermined: the interval covers {covered[0]}..{covered[-1]}; {self.narrowing()}"

    def narrowing(self) -> str:
        """Which trials would narrow the interval: the fitted range's ends (they pin the slope), batch
        sizes with a single good trial, batch sizes left out, and more batch sizes when only 3 fit."""
        ends = sorted({self.batch_sizes[0], self.batch_sizes[-1]})
        parts = [f"B={', '.join(map(str, ends))} (the ends of the fitted range)"]
        single = [b for b in self.batch_sizes if len(self.good.get(b, [])) == 1 and b not in ends]
        if single:
            parts.append(f"B={', '.join(map(str, single))} (one good trial{' each' if len(single) > 1 else ''})")
        if self.left_out:
            parts.append(f"B={', '.join(map(str, sorted(self.left_out)))} (left out)")
        more = " or at more batch sizes" if len(self.batch_sizes) <= MIN_BATCH_SIZES else ""
        return f"more trials at {', '.join(parts)}{more} would narrow it"

    def sentence(self) -> str:
        k, n = len(self.batch_sizes), sum(len(self.good[b]) for b in self.batch_sizes)
        if self.slope is None:
            sizes = f" (B={', '.join(map(str, self.batch_sizes))})" if self.batch_sizes else ""
            return (f"LR scaling: {k} batch sizes with good trials{sizes}, need {MIN_BATCH_SIZES}: "
                    f"no slope fitted; run more trials at other batch sizes")
        low, high = self.interval  # type: ignore[misc]
        return (f"this task's best LR scales as B^{self.slope:.2f} +/- {self.half_width:.2f} "
                f"({100 * self.confidence:.0f}% CI [{low:.2f}, {high:.2f}], {k} batch sizes, {n} good trials): "
                f"{self.verdict()}")

    def headline(self) -> str:
        """The sentence, short enough for a figure's title."""
        if self.slope is None:
            return f"LR scaling: {len(self.batch_sizes)} batch sizes with good trials, need {MIN_BATCH_SIZES}"
        low, high = self.interval  # type: ignore[misc]
        covered = self.covered_rules
        verdict = (f"the {self.rule} rule" if self.rule else
                   f"undetermined (covers {covered[0]}..{covered[-1]})" if covered else "outside every rule")
        return (f"best LR ~ B^{self.slope:.2f}, {100 * self.confidence:.0f}% CI [{low:.2f}, {high:.2f}] over "
                f"{len(self.batch_sizes)} batch sizes: {verdict}")

    def notes(self) -> list[str]:
        """What the fit left out and why, and what a good trial is: one line each."""
        lines = [f"good trials: within {self.tolerance:.3g} of their batch size's best"]
        if self.left_out and self.study_best is not None:
            out = ", ".join(f"B={b} (best {v:.4g})" for b, v in sorted(self.left_out.items()))
            lines.append(f"left out of the LR fit: {out}: more than {self.far:.3g} below the study's best "
                         f"{self.study_best:.4g}, so their search found no good LR")
        return lines


def default_tolerance(values: list[float]) -> float:
    """1% of the range of the finished values: a good trial is as good as the best up to this."""
    return TOLERANCE_OF_RANGE * (max(values) - min(values)) if values else 0.0


def good_points(points: list[LrPoint], maximize: bool, tolerance: float,
                far: float) -> tuple[dict[int, list[LrPoint]], dict[int, float], float | None]:
    """Per batch size, the trials within `tolerance` of its best; and the batch sizes whose best
    trails the study's best by more than `far` (left out, with their best value)."""
    sign = 1.0 if maximize else -1.0
    by_batch: dict[int, list[LrPoint]] = {}
    for p in points:
        by_batch.setdefault(p.batch_size, []).append(p)
    if not by_batch:
        return {}, {}, None
    best = {b: max(ps, key=lambda p: sign * p.value).value for b, ps in by_batch.items()}
    study_best = max(best.values(), key=lambda v: sign * v)
    good, left_out = {}, {}
    for b in sorted(by_batch):
        if sign * (study_best - best[b]) > far:
            left_out[b] = best[b]
            continue
        good[b] = sorted((p for p in by_batch[b] if sign * (best[b] - p.value) <= tolerance),
                         key=lambda p: p.trial)
    return good, left_out, study_best


def fit_lr_scaling(points: list[LrPoint], maximize: bool = True, tolerance: float | None = None,
                   far: float | None = None, confidence: float = 0.95) -> LrFit:
    """Fit the slope of log LR on log B over the good trials (module docstring: why per-batch-size
    means). `tolerance` and `far` are in metric units; None: 1% and 10% of the range of `points`."""
    points = [p for p in points if p.lr and p.lr > 0 and math.isfinite(p.value)]
    values = [p.value for p in points]
    span = (max(values) - min(values)) if values else 0.0
    tolerance = default_tolerance(values) if tolerance is None else tolerance
    far = FAR_OF_RANGE * span if far is None else far
    good, left_out, study_best = good_points(points, maximize, tolerance, far)
    batch_sizes = sorted(good)
    means = [float(np.mean([math.log(p.lr) for p in good[b]])) for b in batch_sizes]
    sign = 1.0 if maximize else -1.0
    best_trials = [max(good[b], key=lambda p: (sign * p.value, -p.trial)).trial for b in batch_sizes]
    fit = LrFit(batch_sizes, [math.exp(m) for m in means], best_trials,
                tolerance=tolerance, far=far, good=good, left_out=left_out, study_best=study_best,
                confidence=confidence)
    if len(batch_sizes) < MIN_BATCH_SIZES:
        return fit
    x, y = np.log(batch_sizes), np.array(means)
    sxx = float(np.sum((x - x.mean()) ** 2))
    slope = float(np.sum((x - x.mean()) * (y - y.mean())) / sxx)
    intercept = float(y.mean() - slope * x.mean())
    dof = len(batch_sizes) - 2
    stderr = math.sqrt(float(np.sum((y - intercept - slope * x) ** 2)) / dof / sxx)
    fit.slope, fit.intercept = slope, intercept
    from scipy import stats  # here, not at the top: a worker that only trains never loads scipy (0.6 s)

    fit.half_width = float(stats.t.ppf(0.5 + confidence / 2, dof)) * stderr
    return fit
