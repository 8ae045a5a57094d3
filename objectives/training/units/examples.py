"""`examples`: training examples seen (the same compute at every batch size)."""

from __future__ import annotations

from objectives.training.units.base import CountsExamples
from objectives.training.units.registry import register


@register
class Examples(CountsExamples):
    name = "examples"
    step_unit = "examples"
    consumed_attr = "examples_seen"
    steps_attr = ("examples_seen", 1)
    whole = True

    def examples_within(self, units, budget):
        return int(units)

    def planned(self, plan, budget):
        return plan.planned_examples

    def trained(self, result, plan, budget):
        return result.examples_seen

    def aside(self, attrs, prefix):
        return float(attrs.get(f"{prefix}_examples") or 0)
