"""`tokens`: examples x the task's tokens_per_example; report steps count tokens."""

from __future__ import annotations

from objectives.training.units.base import CountsExamples
from objectives.training.units.registry import register


@register
class Tokens(CountsExamples):
    name = "tokens"
    step_unit = "tokens"
    consumed_attr = "tokens_seen"
    steps_attr = ("tokens_seen", 1)
    whole = True

    def per_example(self, budget):
        return budget.per_example()

    def planned(self, plan, budget):
        return plan.planned_tokens or 0

    def trained(self, result, plan, budget):
        return result.examples_seen * (budget.tokens_per_example or 0)

    def aside(self, attrs, prefix):
        return float(attrs.get(f"{prefix}_examples") or 0) * float(attrs.get("tokens_per_example") or 0)

    def missing(self, tokens_per_example):
        if tokens_per_example is None:
            return ("declares no tokens_per_example, which a tokens budget counts with: set "
                    "Task(tokens_per_example=...) in the task, or use budget.unit examples")
        return None
