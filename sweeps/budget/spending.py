"""What a trial costs against `study.total_budget`: planned before it starts (what the ledger
reserves), actual once it ended (what the ledger settles to).

In the budget's own unit (updates, examples, epochs, tokens) a trial's plan gives its cost ahead:
the updates, examples, epochs or tokens it will train at most. In training time:
- a `seconds` budget: the trial's own time budget (`budget.per_trial` seconds, / 3600 in gpu_hours);
- any other budget: an estimate, the trial's planned units times the seconds per unit measured on
  the study's finished trials; before any trial finished it is 0, so each worker's first trials
  are not held back and the total can overrun by the trials in flight, at most one per worker.
The actual cost is what the trial recorded: its `examples_seen`, `updates`, ... or its
`train_seconds` (/ 3600 in gpu_hours), the training time of one process on one device, plus what
its cooldown branches trained (`record.cooldown_consumed`; the reservation does not foresee them,
so with cooldown evaluations the total can overrun by the branches of the trials in flight), and
what its horizons' branches trained (`record.branches_consumed`; these the reservation includes:
their lengths and branch points are known before the trial starts).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from objectives.training.budget import Budget, plan_trial
from objectives.training.horizons import branches_planned
from objectives.training.schedule import Schedule
from objectives.training.units import unit_named
from sweeps.config.study_file import TIME_UNITS, SweepConfig, TotalBudgetSection
from sweeps.search.space import Suggestion
from sweeps.trial.record import aside_consumed

CLOCK = unit_named("seconds")  # what a time total counts, before its scale (TIME_UNITS)


@dataclass
class Pace:
    """Seconds of training per budget unit, from finished trials (for a time total on a counting budget)."""

    seconds: float = 0.0
    units: float = 0.0

    def add(self, attrs: Mapping[str, Any], budget_unit: str) -> None:
        seconds, units = attrs.get(CLOCK.consumed_attr), attrs.get(unit_named(budget_unit).consumed_attr)
        if seconds and units:
            self.seconds += float(seconds)
            self.units += float(units)

    @property
    def seconds_per_unit(self) -> float:
        return self.seconds / self.units if self.units else 0.0


@dataclass(frozen=True)
class Spending:
    """The costs of one study's trials against its total budget (only what that needs of the config)."""

    total: TotalBudgetSection
    budget: Budget
    n_train: int
    drop_last: bool
    candidates: tuple[tuple[int, int | None], ...]  # (batch size, epochs) pairs the search can propose
    horizons: tuple[float, ...] | None = None  # budget.horizons: their branches are reserved with the run
    decay_fraction: float = 0.0  # wsd's, for the horizons' branch points
    warmup_updates: int | None = None  # schedule.warmup_updates

    @classmethod
    def of(cls, config: SweepConfig, budget: Budget, n_train: int) -> Spending | None:
        """None when the study has no total budget."""
        total = config.study.total_budget
        if total is None:
            return None
        epochs: Iterable[int | None] = config.search.epoch_choices() or [None]
        pairs = tuple(itertools.product(config.search.batch_sizes(), epochs))
        return cls(total, budget, n_train, config.objective.drop_last, pairs, config.budget.horizon_units(),
                   config.schedule.decay_fraction or 0.0, config.schedule.warmup_updates)

    @property
    def estimated(self) -> bool:
        """True when the planned cost is an estimate (a time total on a counting budget)."""
        return self.total.unit in TIME_UNITS and not self.budget.timed

    def planned(self, batch_size: int, epochs: int | None, pace: Pace | None = None,
                warmup_fraction: float = 0.0) -> float:
        """The most the trial can cost (an estimate, see the module's docstring, for `estimated`),
        its horizons' branches included (`warmup_fraction` moves where they leave the run)."""
        unit = self.total.unit
        if unit in TIME_UNITS and self.budget.timed:
            return self.budget.per_trial / TIME_UNITS[unit]
        plan = plan_trial(self.budget, self.n_train, batch_size, epochs, self.drop_last)
        units = self.budget.planned(plan)
        if self.horizons is not None:
            schedule = Schedule.build(1.0, plan.planned_updates, warmup_fraction, "wsd", 0.0, self.decay_fraction,
                                      warmup_updates=self.warmup_updates)
            units += branches_planned(self.horizons, self.budget, plan, schedule)
        if unit in TIME_UNITS:
            rate = pace.seconds_per_unit if pace is not None else 0.0
            return units * rate / TIME_UNITS[unit]
        return units  # the total counts in the budget's own unit

    def planned_for(self, point: Suggestion, pace: Pace | None = None) -> float:
        return self.planned(point.batch_size, point.epochs, pace, point.warmup_fraction)

    def cheapest(self, pace: Pace | None = None) -> float:
        """The least any trial of the search can cost: once less than that is left, the budget is spent."""
        return min(self.planned(b, e, pace) for b, e in self.candidates)

    def actual(self, attrs: Mapping[str, Any]) -> float:
        """What a trial cost, from the attributes it recorded (0 for one that never trained)."""
        return cost_in(self.total.unit, attrs)


def cost_in(unit: str, attrs: Mapping[str, Any]) -> float:
    """What a trial (or the LR range test) cost in a total's unit, from its recorded attributes."""
    if unit in TIME_UNITS:
        seconds = CLOCK.consumed(attrs) + aside_consumed(attrs, CLOCK.name)
        return seconds / TIME_UNITS[unit]
    return unit_named(unit).consumed(attrs) + aside_consumed(attrs, unit)
