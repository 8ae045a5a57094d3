"""Counting: iterations per epoch, updates, examples and epochs under a compute budget.

Formulas from docs/background.md (section Counting): I = ceil(N/B) (floor with drop_last),
updates S = I * E, examples seen = N * E. A trial is planned as a number of optimizer updates so
that its LR schedule can end exactly on its last update.

What differs between the units (updates, examples, epochs, tokens, seconds) lives in one class
per unit (`objectives/training/units/`); a `Budget` holds its unit's, as `kind`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from objectives.training.units.registry import step_unit_of as step_unit_of  # re-exported
from objectives.training.units.registry import unit_named


def iterations_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    if drop_last:
        return n // batch_size
    return -(-n // batch_size)


def examples_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    return iterations_per_epoch(n, batch_size, drop_last) * batch_size if drop_last else n


def batch_lengths(n: int, batch_size: int, drop_last: bool = False) -> list[int]:
    """Examples in each batch of one epoch: all B, except a smaller last one without drop_last."""
    lengths = [batch_size] * iterations_per_epoch(n, batch_size, drop_last)
    if not drop_last and n % batch_size:
        lengths[-1] = n % batch_size
    return lengths


def examples_after(updates: int, n: int, batch_size: int, drop_last: bool = False) -> int:
    """Examples processed by the first `updates` updates (epochs restart the batch order)."""
    per_epoch = iterations_per_epoch(n, batch_size, drop_last)
    full, rest = divmod(updates, per_epoch)
    return full * examples_per_epoch(n, batch_size, drop_last) + min(rest * batch_size, n)


def updates_within_examples(examples: float, n: int, batch_size: int, drop_last: bool = False) -> int:
    """The most updates whose examples fit in an example budget."""
    per_epoch = examples_per_epoch(n, batch_size, drop_last)
    full, rest = divmod(int(examples), per_epoch)
    return full * iterations_per_epoch(n, batch_size, drop_last) + rest // batch_size


@dataclass(frozen=True)
class Budget:
    """A per-trial compute cap and its evaluation grid, in one of the registered units."""

    unit: str  # a registered unit's name: updates | examples | epochs | seconds | tokens | ...
    per_trial: float
    eval_every: float
    tokens_per_example: int | None = None  # the task's; a tokens budget needs it to count
    kind: object = field(init=False, repr=False, compare=False)  # the unit's class (units.BudgetUnit)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", unit_named(self.unit))

    @property
    def timed(self) -> bool:
        """The clock, not a count, ends a trial."""
        return self.kind.timed

    def step_scale(self, n_train: int) -> float:
        """Multiplier from budget units to the integer step reported to the pruner."""
        return self.kind.step_scale(n_train)

    def per_example(self) -> int:
        """Tokens per example; an error naming the fix when the task declares none."""
        if self.tokens_per_example is None:
            raise ValueError("a tokens budget needs the task's tokens_per_example")
        return self.tokens_per_example

    def to_step(self, units: float, n_train: int) -> int:
        return int(round(units * self.kind.step_scale(n_train)))

    def updates_cap(self, n: int, batch_size: int, drop_last: bool) -> int | None:
        """Updates the budget allows; None for a timed unit (planned from measured throughput)."""
        return self.kind.updates_cap(self, n, batch_size, drop_last)

    def updates_to_reach(self, units: float, plan: TrialPlan) -> int:
        """The fewest updates of `plan` whose work reaches `units`."""
        return self.kind.updates_to_reach(units, plan, self)

    def planned(self, plan: TrialPlan) -> float:
        """The trial's whole plan in the budget's unit (less than the budget when epochs end it first)."""
        return float(self.kind.planned(plan, self))


@dataclass(frozen=True)
class TrialPlan:
    """What one trial will do, derived before it trains."""

    n_train: int
    batch_size: int
    drop_last: bool
    iterations_per_epoch: int
    planned_updates: int
    stop_reason: str  # why training ends if nothing else stops it: budget | epochs
    tokens_per_example: int | None = None  # the task's, when it declares one

    @property
    def planned_examples(self) -> int:
        return examples_after(self.planned_updates, self.n_train, self.batch_size, self.drop_last)

    @property
    def planned_tokens(self) -> int | None:
        if self.tokens_per_example is None:
            return None
        return self.planned_examples * self.tokens_per_example

    @property
    def planned_epochs(self) -> float:
        return self.planned_updates / self.iterations_per_epoch


def plan_trial(
    budget: Budget,
    n_train: int,
    batch_size: int,
    epochs: int | None = None,
    drop_last: bool = False,
    updates_for_seconds: int | None = None,
) -> TrialPlan:
    """Plan min(epochs, budget) updates; a seconds budget passes its throughput-based estimate."""
    per_epoch = iterations_per_epoch(n_train, batch_size, drop_last)
    if per_epoch < 1:
        raise ValueError(f"batch size {batch_size} exceeds the {n_train} training examples with drop_last")
    cap = budget.updates_cap(n_train, batch_size, drop_last)
    if cap is None:
        cap = updates_for_seconds if updates_for_seconds is not None else 2**62
    tokens = budget.tokens_per_example
    if epochs is not None and epochs * per_epoch < cap:
        return TrialPlan(n_train, batch_size, drop_last, per_epoch, epochs * per_epoch, "epochs", tokens)
    return TrialPlan(n_train, batch_size, drop_last, per_epoch, cap, "budget", tokens)


def eval_points(plan: TrialPlan, budget: Budget) -> dict[int, int]:
    """Map 'after this many updates' -> integer report step, for each grid point the plan reaches.

    Every trial reports at the same steps (multiples of eval_every in budget units), whatever its
    batch size, so the pruner compares equal compute. Seconds are timed, not precomputed.
    """
    if budget.timed:
        return {}
    points: dict[int, int] = {}
    k = 1
    while k * budget.eval_every <= budget.per_trial + 1e-9:
        units = k * budget.eval_every
        after = budget.updates_to_reach(units, plan)
        if after > plan.planned_updates:
            break
        points[max(after, 1)] = budget.to_step(units, plan.n_train)
        k += 1
    return points


def eval_window(plan: TrialPlan, budget: Budget) -> int:
    """Updates from the start to the first evaluation: the grid's window (a tenth of the plan
    under a seconds budget, whose grid is timed)."""
    points = eval_points(plan, budget)
    return min(points) if points else max(1, plan.planned_updates // 10)


import objectives.training.units  # noqa: E402, F401  (registers the built-in units; they count with the functions above)
