"""The two Pareto fronts of a study: its metric against the examples and the seconds each trial used.

A trial is on a front when no other complete trial reached a value at least as good for no more
cost, and strictly better in one of the two. Costs are the trial's recorded `examples_seen` and
`train_seconds` (`sweeps.trial.record`), so a large batch that wins in seconds long after it stops
winning in examples shows as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optuna.trial import FrozenTrial

from sweeps.trial.record import TrialRecord

# front id -> (the record's cost attribute, its axis title)
COSTS = {"examples": ("examples_seen", "examples seen"), "seconds": ("train_seconds", "train seconds")}


@dataclass(frozen=True)
class Point:
    cost: float
    value: float
    trial: int
    batch_size: int | None


@dataclass
class Front:
    cost: str  # a key of COSTS
    points: list[Point]  # every complete trial that recorded the cost, cheapest first
    front: list[Point]  # the non-dominated ones, cheapest first (so each is better than the last)


def pareto_front(points: list[Point], maximize: bool) -> list[Point]:
    """The points no other point dominates (cost no higher, value no worse, one strictly), cheapest first."""
    sign = 1 if maximize else -1
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.cost, -sign * p.value, p.trial)):
        if not front or sign * p.value > sign * front[-1].value:  # at equal cost the best comes first
            front.append(p)
    return front


def front_of(trials: list[FrozenTrial], cost: str, maximize: bool) -> Front:
    attr = COSTS[cost][0]
    points = []
    for t in trials:
        record = TrialRecord.of(t)
        spent = getattr(record, attr)
        if t.value is None or spent is None or not math.isfinite(t.value) or not spent > 0:
            continue
        points.append(Point(float(spent), float(t.value), t.number, record.batch_size))
    points.sort(key=lambda p: (p.cost, p.trial))
    return Front(cost, points, pareto_front(points, maximize))


def fronts(complete: list[FrozenTrial], maximize: bool) -> dict[str, Front]:
    """Both fronts over the complete trials: one per cost in COSTS."""
    return {cost: front_of(complete, cost, maximize) for cost in COSTS}
