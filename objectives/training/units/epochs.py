"""`epochs`: passes over the training set; report steps count examples (epochs x N)."""

from __future__ import annotations

import math

import objectives.training.budget as counting
from objectives.training.units.base import BudgetUnit
from objectives.training.units.registry import register


@register
class Epochs(BudgetUnit):
    name = "epochs"
    step_unit = "examples"
    consumed_attr = "epochs_completed"
    steps_attr = ("examples_seen", 1)

    def step_scale(self, n_train):
        return n_train

    def updates_cap(self, budget, n, batch_size, drop_last):
        return math.floor(budget.per_trial * counting.iterations_per_epoch(n, batch_size, drop_last) + 1e-9)

    def updates_to_reach(self, units, plan, budget):
        return math.ceil(units * plan.iterations_per_epoch - 1e-9)

    def planned(self, plan, budget):
        return plan.planned_epochs

    def trained(self, result, plan, budget):
        return result.updates / plan.iterations_per_epoch

    def aside(self, attrs, prefix):
        per_epoch = attrs.get("iterations_per_epoch")
        return (attrs.get(f"{prefix}_updates") or 0) / per_epoch if per_epoch else 0.0
