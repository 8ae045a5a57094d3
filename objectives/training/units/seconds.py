"""`seconds`: training time; the clock ends the trial, report steps count milliseconds."""

from __future__ import annotations

from objectives.training.units.base import BudgetUnit
from objectives.training.units.registry import register


@register
class Seconds(BudgetUnit):
    name = "seconds"
    step_unit = "ms"
    consumed_attr = "train_seconds"
    steps_attr = ("train_seconds", 1000)
    timed = True

    def step_scale(self, n_train):
        return 1000

    def updates_cap(self, budget, n, batch_size, drop_last):
        return None  # planned from measured throughput

    def planned(self, plan, budget):
        return budget.per_trial

    def trained(self, result, plan, budget):
        return result.train_seconds

    def aside(self, attrs, prefix):
        return attrs.get(f"{prefix}_seconds") or 0.0
