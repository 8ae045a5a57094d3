"""Critical batch size from the sweep's own outcomes (Shallue et al. 2018; McCandlish et al. 2018).

For a target value of the metric, each batch size's steps to target S(B) is read from its
best-reaching trial's learning curve, interpolated linearly between the two evaluations around the
first crossing: the evaluation grid is coarse (every 6,000 examples on digits) and its points alone
would make S(B) follow the grid, not the training. Examples to target E(B) = S(B) * B.

McCandlish's trade-off (S/S_min - 1)(E/E_min - 1) = 1 gives S(B) = S_min (1 + B_crit / B) and
E(B) = E_min (1 + B / B_crit), with B_crit = E_min / S_min. `fit_critical` fits the first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from optuna.trial import FrozenTrial

from sweeps.trial.record import TrialRecord

MIN_REACHED = 3  # batch sizes that reached the target: two parameters and one degree of freedom
WIDE_FACTOR = 10.0  # an interval (or range) of B_crit wider than this, high / low, leaves it undetermined


@dataclass(frozen=True)
class Reach:
    """One trial's first crossing of the target, interpolated between evaluations."""

    batch_size: int
    trial: int
    updates: float
    at_first_evaluation: bool  # crossed before the first evaluation: `updates` is only an upper bound

    @property
    def examples(self) -> float:
        return self.updates * self.batch_size


def crossing(steps: list[int], values: list[float], target: float, maximize: bool) -> tuple[float, bool] | None:
    """The step at which the curve first reaches `target`, linear between the evaluations around it;
    and whether that was the first evaluation (no earlier point to interpolate from). None: never."""
    sign = 1.0 if maximize else -1.0
    for i, (step, value) in enumerate(zip(steps, values)):
        if not math.isfinite(value) or sign * (value - target) < 0:
            continue
        if i == 0 or not math.isfinite(values[i - 1]):
            return float(step), True
        before, prev = values[i - 1], steps[i - 1]
        return prev + (step - prev) * (target - before) / (value - before), False
    return None


def reaches(trials: list[FrozenTrial], target: float, maximize: bool, step_unit: str) -> dict[int, Reach]:
    """Per batch size, its best-reaching trial: the fewest updates to the target, interpolated."""
    best: dict[int, Reach] = {}
    for t in trials:
        record = TrialRecord.of(t)
        batch, ratio = record.batch_size, record.updates_per_step(step_unit)
        if batch is None or ratio is None or not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        found = crossing(steps, [t.intermediate_values[s] for s in steps], target, maximize)
        if found is None:
            continue
        reach = Reach(batch, t.number, max(found[0] * ratio, 1.0), found[1])
        if batch not in best or reach.updates < best[batch].updates:
            best[batch] = reach
    return dict(sorted(best.items()))


@dataclass
class CriticalFit:
    """S(B) = S_min (1 + B_crit / B) over the batch sizes that reached the target."""

    target: float
    reached: dict[int, Reach]
    not_reached: list[int] = field(default_factory=list)  # batch sizes with trials, none reaching
    s_min: float | None = None
    b_crit: float | None = None
    interval: tuple[float, float] | None = None  # of B_crit; None: unbounded (too little data)
    confidence: float = 0.95

    @property
    def fitted(self) -> list[int]:
        return [b for b, r in self.reached.items() if not r.at_first_evaluation]

    @property
    def value(self) -> float | None:
        """B_crit when the fit placed it inside or near the range (positive); None otherwise."""
        return self.b_crit if self.b_crit is not None and self.b_crit > 0 else None

    @property
    def determined(self) -> bool:
        """Whether B_crit is an answer: fitted, with an interval no wider than `WIDE_FACTOR`."""
        return self.value is not None and self.interval is not None and not wide(*self.interval)

    @property
    def e_min(self) -> float | None:
        return None if self.s_min is None or self.b_crit is None else self.s_min * self.b_crit

    def sentence(self, metric: str) -> str:
        head = "critical batch size from steps to target: "
        if self.b_crit is None or self.b_crit <= 0:
            return head + self.reason(metric)
        early = [b for b, r in self.reached.items() if r.at_first_evaluation]
        why = f"; {names(early)} only by the first evaluation (an upper bound, left out)" if early else ""
        over = f"over {len(self.fitted)} batch sizes reaching {metric} {self.target:.4g}{why}"
        if not self.determined:
            return head + f"undetermined {interval_text(self.interval, self.confidence)}, {over}"
        return (head + f"B_crit ~ {self.b_crit:.0f} {interval_text(self.interval, self.confidence)}, "
                f"S_min ~ {self.s_min:.0f} updates, E_min ~ {self.e_min:.0f} examples, {over}")

    def reason(self, metric: str) -> str:
        """Why there is no B_crit inside the range: too few reached, or where it lies instead."""
        fitted, goal = self.fitted, f"{metric} {self.target:.4g}"
        if self.s_min is not None and self.s_min <= 0:
            return (f"B_crit lies above B={max(fitted)} (steps to {goal} fall as fast as 1/B, perfect scaling, "
                    f"over B={min(fitted)}..{max(fitted)})")
        if self.b_crit is not None and self.b_crit <= 0:
            return (f"B_crit lies below B={min(fitted)} (steps to {goal} do not fall with batch size over "
                    f"B={min(fitted)}..{max(fitted)})")
        early = [b for b, r in self.reached.items() if r.at_first_evaluation]
        text = (f"too few batch sizes reached {goal} between two evaluations: {names(fitted) or 'none'} "
                f"(need {MIN_REACHED})")
        fixes = []
        if early:
            text += f"; {names(early)} by the first evaluation (an upper bound only)"
            fixes.append(f"evaluate more often (a smaller budget.eval_every) to time {names(early)}")
        if self.not_reached:
            text += f"; {names(self.not_reached)} never did"
            fixes.append(f"run more trials at {names(self.not_reached)}")
        if not early:
            fixes.append("lower --target")
        return f"{text}: {', or '.join(fixes)}"


def names(batch_sizes: list[int]) -> str:
    return f"B={', '.join(map(str, batch_sizes))}" if batch_sizes else ""


def wide(low: float, high: float) -> bool:
    """Whether [low, high] spans more than `WIDE_FACTOR` (a low end at or below zero always does)."""
    return low <= 0 or high > WIDE_FACTOR * low


def interval_text(interval: tuple[float, float] | None, confidence: float) -> str:
    if interval is None:
        return f"({100 * confidence:.0f}% interval unbounded: too few batch sizes, or too much scatter)"
    low, high = interval
    width = f", wider than {WIDE_FACTOR:g}x" if wide(low, high) else ""
    return f"({100 * confidence:.0f}% interval [{max(low, 0):.0f}, {high:.0f}]{width})"


def fit_critical(reached: dict[int, Reach], target: float, not_reached: list[int] | None = None,
                 confidence: float = 0.95) -> CriticalFit:
    """Fit S = S_min + (S_min B_crit) / B, linear in 1/B, weighted by 1/S^2 (steps to target scatter
    in proportion to their size, so each batch size counts by its relative error); B_crit is the
    ratio of the two coefficients, and its interval is Fieller's for a ratio of regression
    coefficients (Student t on k - 2 degrees of freedom), which is unbounded when the intercept
    S_min is not clearly above zero. Batch sizes whose crossing came at the first evaluation are
    only upper bounds and are left out."""
    fit = CriticalFit(target, reached, sorted(not_reached or []), confidence=confidence)
    batches = fit.fitted
    if len(batches) < MIN_REACHED:
        return fit
    s = np.array([reached[b].updates for b in batches])
    x = np.column_stack([np.ones(len(batches)), 1.0 / np.array(batches, dtype=float)])
    w = 1.0 / s ** 2
    xtwx = x.T @ (w[:, None] * x)
    a, b = np.linalg.solve(xtwx, x.T @ (w * s))
    residual = s - x @ np.array([a, b])
    dof = len(batches) - 2
    cov = float(np.sum(w * residual ** 2)) / dof * np.linalg.inv(xtwx)
    fit.s_min = float(a)
    if a <= 0:  # steps fall at least as fast as 1/B: B_crit lies above the range
        return fit
    fit.b_crit = float(b / a)
    from scipy import stats  # here, not at the top: a worker that only trains never loads scipy (0.6 s)

    fit.interval = fieller(float(a), float(b), cov, float(stats.t.ppf(0.5 + confidence / 2, dof)))
    return fit


def fieller(a: float, b: float, cov: np.ndarray, t: float) -> tuple[float, float] | None:
    """The set of r with (b - r a)^2 <= t^2 Var(b - r a): Fieller's interval for b / a; None when
    it is not a bounded interval (a not significantly different from zero)."""
    v_aa, v_ab, v_bb = float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])
    qa, qb, qc = a * a - t * t * v_aa, a * b - t * t * v_ab, b * b - t * t * v_bb
    disc = qb * qb - qa * qc
    if -1e-9 * qb * qb < disc < 0:  # zero (an exact fit) less rounding: the interval is the point b / a
        disc = 0.0
    if qa <= 0 or disc < 0:
        return None
    root = math.sqrt(disc)
    return (qb - root) / qa, (qb + root) / qa


def steps_ratio(b_over_crit: float) -> float:
    """S / S_min at B = b_over_crit * B_crit."""
    return 1 + 1 / b_over_crit


def examples_ratio(b_over_crit: float) -> float:
    """E / E_min at B = b_over_crit * B_crit."""
    return 1 + b_over_crit


def tradeoff_sentence() -> str:
    """The trade-off around B_crit in words, computed from S(B) and E(B)."""
    s1, e1 = steps_ratio(1.0), examples_ratio(1.0)
    saved = 1 - steps_ratio(2.0) / s1
    more = examples_ratio(2.0) / e1 - 1

    def times(r: float) -> str:
        return {2.0: "twice"}.get(r, f"{r:g} times")

    return (f"at B = B_crit a run takes {times(s1)} the minimum steps and {times(e1)} the minimum examples; "
            f"doubling B from there saves {100 * saved:.0f}% of the steps for {100 * more:.0f}% more examples")
