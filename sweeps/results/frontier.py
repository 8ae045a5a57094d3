"""The frontier: per horizon (a compute level), the best batch size, effective LR and metric, and
power laws of each against compute, fitted over the horizons, with bootstrap intervals; and the
prediction those laws make for a larger budget (`sweeps predict`).

Data: every trial of a study with `budget.horizons` records, per horizon C it finished, the value
its dedicated run of length C would report (objectives/training/horizons.py). So each trial gives
one point (log2 B, log10 lr, value) per compute level.

**The optimum at one compute level** is a local fit over the trials near it, not the luckiest
trial: over the `NEAR` share of its trials with the best values (at least `MIN_NEAR`), a
quadratic surface in (log2 B, log10 lr) by least squares; its stationary point is the optimum
when the surface curves the right way (down for a maximised metric) and the point lies within
the near trials' range. Otherwise (too few distinct values on an axis, a saddle, a point outside)
the optimum is the centroid of the best `TOP` share (at least `MIN_TOP`), and its value their mean.

A quadratic's value at its stationary point is at most as good as the level's best trial measured
(a surface that claims more is extrapolating).

**The laws** (DeepSeek LLM 2024; Porian et al. 2024): log B*(C) = a + alpha_B log C and
log lr*(C) = a + alpha_lr log C, least squares over the horizons, each level weighted by
1 / SD^2 of its optimum over the bootstrap resamples (at least `MIN_SPREAD`): the shortest
horizons, far from converged, often have optima that one trial's luck moves by a decade, and
weighted equally they set the slope (docs/extrapolation.md, regression_onepass); the metric at the optimum
saturating, limit + scale x C^-gamma (`MetricLaw`; a line in log C overshot: it predicted an
accuracy of 1.04 on digits at 10x, docs/extrapolation.md), weighted the same way. Its interval covers the fit's
sampling error only, not a seed's noise nor the law's own error. Intervals: the whole
chain (optima, then fits) over `BOOTSTRAP` resamples of the trials, with replacement; percentile
intervals at `LEVEL`.

**Refusals** (`Refusal`, exit 2 in `sweeps predict`): fewer than `MIN_HORIZONS` compute levels
with `MIN_TRIALS` trials each, fewer than `MIN_BATCH_SIZES` distinct batch sizes, an exponent
whose interval is wider than `MAX_EXPONENT_WIDTH`, or a target past `MAX_REACH` times the
largest horizon trained. No torch here: `sweeps predict` and the report run without it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from sweeps.errors import Refusal
from sweeps.trial.record import TrialRecord, horizons_of

NEAR, MIN_NEAR = 0.3, 8  # the trials a local quadratic is fitted over
TOP, MIN_TOP = 0.15, 3  # the trials whose centroid is the fallback optimum
BOOTSTRAP, LEVEL = 200, 0.90
MIN_HORIZONS, MIN_TRIALS, MIN_BATCH_SIZES = 3, 6, 3
MAX_EXPONENT_WIDTH = 1.0  # the widest interval of a power law's exponent a prediction is made on
MAX_REACH = 32.0  # the furthest a prediction goes: the target over the largest horizon trained
MIN_SPREAD = 0.02  # the least SD (log10) a level's optimum is weighted by in the laws


@dataclass(frozen=True)
class Point:
    """One trial at one compute level."""

    trial: int
    compute: float  # the horizon's length, in the budget's unit
    batch_size: int
    lr: float  # the effective peak LR
    base_lr: float
    coupling: str
    value: float
    warmup_share: float | None  # warmup updates over the planned updates of the trial's longest horizon


@dataclass(frozen=True)
class Optimum:
    compute: float
    batch_size: float  # continuous: 2 ** (fitted log2 B)
    lr: float
    value: float
    method: str  # quadratic | centroid
    trials: int


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class Law:
    """y = intercept + slope x, x = log10 compute, y = log10 of the quantity (the metric: itself)."""

    intercept: float
    slope: float

    def at(self, compute: float) -> float:
        return self.intercept + self.slope * math.log10(compute)


@dataclass(frozen=True)
class MetricLaw:
    """The metric at the optimum against compute: limit + scale x C^-exponent, saturating towards
    `limit` (the metric improves with compute by a shrinking step; scale < 0 for a maximised
    metric, whose value rises towards the limit)."""

    limit: float
    scale: float
    exponent: float

    def at(self, compute: float) -> float:
        return self.limit + self.scale * compute ** -self.exponent


EXPONENTS = np.geomspace(0.02, 2.0, 60)  # the metric law's exponents tried (least squares for the rest at each)


def fit_metric(computes: Sequence[float], values: Sequence[float], maximize: bool,
               sd: Sequence[float] | None = None) -> MetricLaw:
    """Least squares over `EXPONENTS`: at each, limit and scale are linear; the best fit whose scale
    has the right sign (improving with compute). Values that do not improve: a flat law at their
    (weighted) mean. With `sd`, each value weighted by 1 / sd^2."""
    c, v = np.asarray(computes, dtype=float), np.asarray(values, dtype=float)
    w = np.ones_like(v) if sd is None else 1.0 / np.asarray(sd, dtype=float)
    best: tuple[float, MetricLaw] | None = None
    for exponent in EXPONENTS:
        design = np.column_stack([np.ones_like(c), c ** -exponent])
        (limit, scale), *_ = np.linalg.lstsq(design * w[:, None], v * w, rcond=None)
        if (maximize and scale > 0) or (not maximize and scale < 0):
            continue
        error = float(np.sum(((design @ np.array([limit, scale]) - v) * w) ** 2))
        if best is None or error < best[0]:
            best = (error, MetricLaw(float(limit), float(scale), float(exponent)))
    return best[1] if best is not None else MetricLaw(float(np.average(v, weights=w * w)), 0.0, 1.0)


@dataclass(frozen=True)
class Frontier:
    optima: list[Optimum]  # ascending compute
    optima_intervals: list[tuple[Interval, Interval, Interval]]  # (B, lr, value) per compute level
    batch_law: Law  # log10 B* against log10 C
    lr_law: Law  # log10 lr* against log10 C
    value_law: MetricLaw  # the metric at the optimum against C
    batch_exponent: Interval
    lr_exponent: Interval
    coupling: str  # the rule most of the near-optimal trials at the largest horizon used
    warmup_share: float  # the median warmup share of those trials
    replicates: np.ndarray  # per bootstrap resample: batch intercept, slope; lr intercept, slope; metric law


@dataclass(frozen=True)
class Prediction:
    compute: float
    reach: float  # the target over the largest horizon trained
    batch_size: float
    lr: float
    value: float
    batch_interval: Interval
    lr_interval: Interval
    value_interval: Interval


def points_of(trials: Iterable[FrozenTrial]) -> list[Point]:
    """Every finished horizon of every trial that recorded one with a finite value."""
    points = []
    for trial in trials:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        record = TrialRecord.of(trial)
        if record.batch_size is None or not record.lr:
            continue
        base_lr = trial.params.get("base_lr", record.lr)
        share = (record.warmup_updates / record.planned_updates
                 if record.warmup_updates is not None and record.planned_updates else None)
        for horizon in horizons_of(record):
            if horizon.value is None or horizon.stop_reason == "diverged" or not math.isfinite(horizon.value):
                continue
            points.append(Point(trial.number, float(horizon.length), record.batch_size, record.lr, base_lr,
                                record.coupling or "none", horizon.value, share))
    return points


def by_compute(points: Sequence[Point]) -> dict[float, list[Point]]:
    levels: dict[float, list[Point]] = {}
    for p in points:
        levels.setdefault(p.compute, []).append(p)
    return dict(sorted(levels.items()))


def ranked(points: Sequence[Point], maximize: bool) -> list[Point]:
    return sorted(points, key=lambda p: -p.value if maximize else p.value)


def optimum(points: Sequence[Point], maximize: bool) -> Optimum:
    """The local fit at one compute level (module docstring)."""
    best_first = ranked(points, maximize)
    near = best_first[:max(MIN_NEAR, math.ceil(NEAR * len(best_first)))]
    fitted = quadratic_optimum(near, maximize)
    compute = points[0].compute
    if fitted is not None:
        x, y, value = fitted
        best = best_first[0].value  # a surface that claims more than any trial measured is extrapolating
        value = min(value, best) if maximize else max(value, best)
        return Optimum(compute, 2.0**x, 10.0**y, value, "quadratic", len(near))
    top = best_first[:max(MIN_TOP, math.ceil(TOP * len(best_first)))]
    x = float(np.mean([math.log2(p.batch_size) for p in top]))
    y = float(np.mean([math.log10(p.lr) for p in top]))
    return Optimum(compute, 2.0**x, 10.0**y, float(np.mean([p.value for p in top])), "centroid", len(top))


def quadratic_optimum(near: Sequence[Point], maximize: bool) -> tuple[float, float, float] | None:
    """The stationary point of v = c0 + c1 x + c2 y + c3 x^2 + c4 y^2 + c5 x y over the near trials,
    when it is an optimum of the right kind inside their range; else None."""
    x = np.array([math.log2(p.batch_size) for p in near])
    y = np.array([math.log10(p.lr) for p in near])
    v = np.array([p.value for p in near])
    if len(near) < MIN_NEAR or len(set(x)) < 3 or len(set(np.round(y, 6))) < 3:
        return None
    design = np.column_stack([np.ones_like(x), x, y, x * x, y * y, x * y])
    coef, _, rank, _ = np.linalg.lstsq(design, v, rcond=None)
    if rank < 6:
        return None
    hessian = np.array([[2 * coef[3], coef[5]], [coef[5], 2 * coef[4]]])
    eigen = np.linalg.eigvalsh(hessian)
    if (maximize and not (eigen < 0).all()) or (not maximize and not (eigen > 0).all()):
        return None
    sx, sy = np.linalg.solve(hessian, -coef[1:3])
    if not (x.min() <= sx <= x.max() and y.min() <= sy <= y.max()):
        return None
    value = coef @ np.array([1.0, sx, sy, sx * sx, sy * sy, sx * sy])
    return float(sx), float(sy), float(value)


def fit_line(xs: Sequence[float], ys: Sequence[float], sd: Sequence[float] | None = None) -> Law:
    """Least squares; with `sd`, each point weighted by 1 / sd^2 (its residual by 1 / sd)."""
    weights = None if sd is None else 1.0 / np.asarray(sd, dtype=float)
    slope, intercept = np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1, w=weights)
    return Law(float(intercept), float(slope))


def laws(optima: Sequence[Optimum], maximize: bool, spread: np.ndarray | None = None) -> tuple[Law, Law, MetricLaw]:
    """The three laws over the levels' optima; `spread` [level, 3]: the bootstrap SD of each level's
    log10 B*, log10 lr* and value (`level_spread`), which weights the levels in each law."""
    c = [math.log10(o.compute) for o in optima]
    sd = (None, None, None) if spread is None else spread.T
    return (fit_line(c, [math.log10(o.batch_size) for o in optima], sd[0]),
            fit_line(c, [math.log10(o.lr) for o in optima], sd[1]),
            fit_metric([o.compute for o in optima], [o.value for o in optima], maximize, sd[2]))


def level_spread(draws: np.ndarray) -> np.ndarray:
    """Per level, the bootstrap SD of log10 B*, of log10 lr* (each at least `MIN_SPREAD`) and of the
    value (at least `MIN_SPREAD` of the largest): [level, 3]. `draws`: [replicate, level, (B, lr, value)]."""
    logs = np.maximum(np.log10(draws[:, :, :2]).std(axis=0), MIN_SPREAD)
    values = draws[:, :, 2].std(axis=0)
    values = np.maximum(values, MIN_SPREAD * max(float(values.max()), 1e-12))
    return np.column_stack([logs, values])


def usable_levels(points: Sequence[Point]) -> dict[float, list[Point]]:
    return {c: ps for c, ps in by_compute(points).items() if len(ps) >= MIN_TRIALS}


def frontier(trials: Iterable[FrozenTrial], maximize: bool, seed: int = 0) -> Frontier:
    """The optima and laws of a study's trials; `Refusal` when there are too few to fit."""
    points = points_of(trials)
    levels = usable_levels(points)
    if len(levels) < MIN_HORIZONS:
        raise Refusal(f"{len(levels)} horizons with at least {MIN_TRIALS} finished trials each; the laws need "
                      f"{MIN_HORIZONS}: add horizons to budget.horizons, or run more trials")
    sizes = {p.batch_size for ps in levels.values() for p in ps}
    if len(sizes) < MIN_BATCH_SIZES:
        raise Refusal(f"the trials tried {len(sizes)} batch sizes; the batch-size law needs {MIN_BATCH_SIZES}: "
                      "widen search.batch_size, or run more trials")
    optima = [optimum(ps, maximize) for ps in levels.values()]
    rng = np.random.default_rng(seed)
    numbers = sorted({p.trial for ps in levels.values() for p in ps})
    by_trial: dict[int, list[Point]] = {}
    for ps in levels.values():
        for p in ps:
            by_trial.setdefault(p.trial, []).append(p)
    replicates: list[list[Optimum]] = []  # each resample's optimum per level
    for _ in range(BOOTSTRAP):
        drawn = rng.choice(numbers, size=len(numbers), replace=True)
        resampled = by_compute([p for n in drawn for p in by_trial[n]])
        if any(len(resampled.get(c, [])) < MIN_TOP for c in levels):
            continue
        replicates.append([optimum(resampled[c], maximize) for c in levels])
    draws = np.array([[(o.batch_size, o.lr, o.value) for o in draw] for draw in replicates])  # (replicate, level, 3)
    spread = level_spread(draws)
    batch_law, lr_law, value_law = laws(optima, maximize, spread)
    reps = np.array([(b.intercept, b.slope, lr.intercept, lr.slope, v.limit, v.scale, v.exponent)
                     for b, lr, v in (laws(draw, maximize, spread) for draw in replicates)])
    intervals = [tuple(interval(draws[:, i, k]) for k in range(3)) for i in range(len(optima))]
    largest = levels[max(levels)]
    near = ranked(largest, maximize)[:max(MIN_NEAR, math.ceil(NEAR * len(largest)))]
    coupling = Counter(p.coupling for p in near).most_common(1)[0][0]
    shares = [p.warmup_share for p in near if p.warmup_share is not None]
    return Frontier(optima, intervals, batch_law, lr_law, value_law, interval(reps[:, 1]), interval(reps[:, 3]),
                    coupling, float(np.median(shares)) if shares else 0.0, reps)


def interval(values: np.ndarray) -> Interval:
    tail = (1.0 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def predict(front: Frontier, compute: float) -> Prediction:
    """The laws at `compute`; `Refusal` past the reach or on exponents too uncertain to extrapolate."""
    largest = front.optima[-1].compute
    reach = compute / largest
    if reach > MAX_REACH:
        raise Refusal(f"{reach:.3g}x the largest horizon trained ({largest:g}) is past the reach of {MAX_REACH:g}x: "
                      f"sweep at larger horizons first, or predict at most {MAX_REACH * largest:g}")
    for name, bounds in (("batch-size", front.batch_exponent), ("LR", front.lr_exponent)):
        if bounds.width > MAX_EXPONENT_WIDTH:
            raise Refusal(f"the {name} law's exponent is too uncertain to extrapolate: its {LEVEL:.0%} interval "
                          f"[{bounds.low:.2f}, {bounds.high:.2f}] is wider than {MAX_EXPONENT_WIDTH:g}; run more "
                          "trials, or add horizons")
    x = math.log10(compute)
    reps = front.replicates
    return Prediction(
        compute, reach,
        10.0 ** front.batch_law.at(compute), 10.0 ** front.lr_law.at(compute), front.value_law.at(compute),
        power_interval(reps[:, 0] + reps[:, 1] * x), power_interval(reps[:, 2] + reps[:, 3] * x),
        interval(reps[:, 4] + reps[:, 5] * compute ** -reps[:, 6]),
    )


def power_interval(logs: np.ndarray) -> Interval:
    bounds = interval(logs)
    return Interval(10.0**bounds.low, 10.0**bounds.high)
