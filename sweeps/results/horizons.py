"""What a sweep with `budget.horizons` found at each horizon, read from the trials' records.

Every trial answers each horizon it reached (objectives/training/horizons.py): a complete trial all
of them, a pruned one those it finished before the pruner stopped it. `best_per_horizon` picks,
per horizon, the best value among every trial that recorded it (`sweeps best`); `best_against_compute` adds
what the sweep spent to answer every horizon up to each one, so the best value can be read against
compute (`sweeps report`). A horizon that diverged, or recorded no finite value, is left out.
No torch here: the read-only commands stay light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from sweeps.trial.record import HorizonRecord, TrialRecord, consumed, consumed_to_horizon, horizons_of

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SPENT = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # trials whose compute is spent


def answered(horizon: HorizonRecord) -> bool:
    """A horizon whose value counts: finite, and not from a run that diverged."""
    return (horizon.value is not None and math.isfinite(horizon.value)
            and horizon.stop_reason != "diverged")


def fraction(length: float, longest: float) -> str:
    """A horizon as a fraction of the longest, as `budget.horizons` writes it: '0.25x'."""
    return f"{length / longest:.4g}x"


@dataclass(frozen=True)
class HorizonBest:
    """The best trial at one horizon."""

    length: float  # in the budget's unit
    trial: FrozenTrial
    horizon: HorizonRecord  # what that trial recorded there
    finished: int  # trials that answered this horizon

    @property
    def value(self) -> float:
        return float(self.horizon.value)  # type: ignore[arg-type]  # answered: not None


def horizon_lengths(trials: Sequence[FrozenTrial]) -> list[float]:
    """Every length the trials recorded, ascending; empty for a study without horizons."""
    return sorted({h.length for t in trials for h in horizons_of(TrialRecord.of(t))})


def best_per_horizon(trials: Sequence[FrozenTrial], maximize: bool) -> list[HorizonBest]:
    """Per horizon the trials answered, ascending: the best of them (ties: the lower trial number)."""
    found: dict[float, list[tuple[FrozenTrial, HorizonRecord]]] = {}
    for t in trials:
        if t.state not in FINISHED:
            continue
        for h in horizons_of(TrialRecord.of(t)):
            if answered(h):
                found.setdefault(h.length, []).append((t, h))
    sign = -1 if maximize else 1
    out = []
    for length in sorted(found):
        trial, horizon = min(found[length], key=lambda th: (sign * th[1].value, th[0].number))
        out.append(HorizonBest(length, trial, horizon, len(found[length])))
    return out


def best_of_horizon(trials: Sequence[FrozenTrial], maximize: bool, length: float,
                    number: int | None = None) -> tuple[FrozenTrial, HorizonRecord] | None:
    """The trial to export at `length`: the best there, or trial `number` when it answered it."""
    if number is None:
        best = next((b for b in best_per_horizon(trials, maximize) if b.length == length), None)
        return None if best is None else (best.trial, best.horizon)
    for t in trials:
        if t.number == number and t.state in FINISHED:
            found = [h for h in horizons_of(TrialRecord.of(t)) if h.length == length and answered(h)]
            return (t, found[0]) if found else None
    return None


@dataclass(frozen=True)
class ComputePoint:
    """One horizon on the value-against-compute frontier."""

    length: float
    fraction: str  # of the longest horizon, '0.25x'
    best: float
    trial: int
    so_far: float  # the best at this horizon or any shorter one
    so_far_trial: int
    spent: float  # what the sweep trained, in the budget's unit, to answer every horizon up to this one
    finished: int  # trials that answered it

    def row(self, metric: str, unit: str) -> dict:
        return {"horizon": whole(self.length), "fraction": self.fraction, metric: self.best, "trial": self.trial,
                "best_so_far": self.so_far, f"spent_{unit}": whole(self.spent), "trials": self.finished}


def whole(amount: float) -> float | int:
    """An amount as a count when it is one: 7500, not 7500.0 (nor 7.5e+03 in a table)."""
    return int(amount) if float(amount).is_integer() else amount


def length_text(length: float) -> str:
    """A length as a study file writes it: 7500, 2.25 (never 1.5e+06)."""
    return str(whole(length)) if float(length).is_integer() else f"{length:.6g}"


def spent_to(trial: FrozenTrial, length: float, budget_unit: str) -> float:
    """What a trial trained, in the budget's unit, to answer every horizon up to `length`: all of
    it when it stopped before that horizon (or recorded none)."""
    horizons = horizons_of(TrialRecord.of(trial))
    index = next((i for i, h in enumerate(horizons) if h.length == length), None)
    if index is None:
        return consumed(trial, budget_unit)
    return consumed_to_horizon(trial.user_attrs, horizons, index, budget_unit)


def best_against_compute(trials: Sequence[FrozenTrial], maximize: bool, budget_unit: str) -> list[ComputePoint]:
    """Per horizon, ascending: its best value, the best so far over it and the shorter ones, and
    the compute the sweep spent on its trials (complete, pruned and failed) to answer every horizon
    up to it; empty for a study without horizons."""
    bests = best_per_horizon(trials, maximize)
    if not bests:
        return []
    longest = max(horizon_lengths(trials))
    spent_trials = [t for t in trials if t.state in SPENT]
    points: list[ComputePoint] = []
    for b in bests:
        prior = points[-1] if points else None
        better = prior is None or (b.value > prior.so_far if maximize else b.value < prior.so_far)
        so_far, so_far_trial = (b.value, b.trial.number) if better else (prior.so_far, prior.so_far_trial)
        spent = sum(spent_to(t, b.length, budget_unit) for t in spent_trials)
        points.append(ComputePoint(b.length, fraction(b.length, longest), b.value, b.trial.number, so_far,
                                    so_far_trial, spent, b.finished))
    return points
