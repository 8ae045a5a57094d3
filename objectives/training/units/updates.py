"""`updates`: optimizer updates, whatever their batch size."""

from __future__ import annotations

import math

from objectives.training.units.base import BudgetUnit
from objectives.training.units.registry import register


@register
class Updates(BudgetUnit):
    name = "updates"
    step_unit = "updates"
    consumed_attr = "updates"
    steps_attr = ("updates", 1)
    whole = True

    def updates_cap(self, budget, n, batch_size, drop_last):
        return int(budget.per_trial)

    def updates_to_reach(self, units, plan, budget):
        return math.ceil(units - 1e-9)

    def planned(self, plan, budget):
        return plan.planned_updates

    def trained(self, result, plan, budget):
        return result.updates

    def aside(self, attrs, prefix):
        return attrs.get(f"{prefix}_updates") or 0
