"""What a budget unit is: the one interface every unit implements (one file per unit beside it).

A unit says how a per-trial amount caps the optimizer updates, how far a count of units reaches,
what the integer report steps count, what a trial planned and consumed in it, and whether the
clock, not a count, ends a trial. `Budget` (`objectives/training/budget.py`) holds one, and
nothing else branches on the unit's name. Adding a unit is one class, registered with
`units.register`: the study file's validation and `docs/study.schema.json` read the registry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import objectives.training.budget as counting

if TYPE_CHECKING:
    from objectives.training.budget import Budget, TrialPlan
    from objectives.training.loop import TrainResult


class BudgetUnit:
    """One budget unit. Subclasses set the class attributes and the methods that differ."""

    name: ClassVar[str]  # as the study file spells it (budget.unit)
    step_unit: ClassVar[str]  # what one integer report step counts (stored as the study's step_unit)
    consumed_attr: ClassVar[str]  # the stored trial attribute that counts what the trial used
    # the stored trial attribute a report step counts, and its factor (a trial's updates per step)
    steps_attr: ClassVar[tuple[str, float]]
    timed: ClassVar[bool] = False  # the clock ends a trial: no update cap, no grid known ahead
    whole: ClassVar[bool] = False  # amounts are whole numbers (per_trial, eval_every's default)

    def step_scale(self, n_train: int) -> float:
        """Multiplier from budget units to the integer step reported to the pruner."""
        return 1

    def updates_cap(self, budget: Budget, n: int, batch_size: int, drop_last: bool) -> int | None:
        """Updates the budget allows; None when they are measured, not counted (timed)."""
        raise NotImplementedError

    def updates_to_reach(self, units: float, plan: TrialPlan, budget: Budget) -> int:
        """The fewest updates whose work reaches `units` (a grid point)."""
        raise NotImplementedError

    def planned(self, plan: TrialPlan, budget: Budget) -> float:
        """The trial's whole plan in this unit (less than the budget when epochs end it first)."""
        raise NotImplementedError

    def trained(self, result: TrainResult, plan: TrialPlan, budget: Budget) -> float:
        """What a finished run used, in this unit (its last report step, scaled)."""
        raise NotImplementedError

    def consumed(self, attrs: Mapping[str, Any]) -> float:
        """What a trial used, from its stored attributes, its cooldown branches left out."""
        return float(attrs.get(self.consumed_attr) or 0.0)

    def aside(self, attrs: Mapping[str, Any], prefix: str) -> float:
        """What a trial trained beside its run, from its stored `{prefix}_updates`, `_examples` and
        `_seconds` (prefix `cooldown`: its cooldown branches; `branch`: its horizons' branches)."""
        raise NotImplementedError

    def missing(self, tokens_per_example: int | None) -> str | None:
        """Why the task cannot be counted in this unit, or None when it can."""
        return None


class CountsExamples(BudgetUnit):
    """A unit that counts the examples trained (scaled by `per_example`)."""

    def per_example(self, budget: Budget) -> int:
        return 1

    def examples_within(self, units: float, budget: Budget) -> int:
        """The most whole examples an amount holds."""
        return math.floor(units / self.per_example(budget) + 1e-9)

    def examples_to_reach(self, units: float, budget: Budget) -> int:
        """The fewest whole examples that reach an amount."""
        return math.ceil(units / self.per_example(budget) - 1e-9)

    def updates_cap(self, budget: Budget, n: int, batch_size: int, drop_last: bool) -> int | None:
        return counting.updates_within_examples(self.examples_within(budget.per_trial, budget), n, batch_size,
                                                drop_last)

    def updates_to_reach(self, units: float, plan: TrialPlan, budget: Budget) -> int:
        examples = self.examples_to_reach(units, budget)
        done = counting.updates_within_examples(examples, plan.n_train, plan.batch_size, plan.drop_last)
        reached = counting.examples_after(done, plan.n_train, plan.batch_size, plan.drop_last)
        return done if reached >= examples else done + 1
