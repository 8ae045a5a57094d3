"""Horizons: one run answers every length, exactly (Hägele et al. 2024).

Under warmup-stable-decay with a warmup fixed in updates, a run of length h and a longer run with
the same batch size, LR and seed train alike up to the update where h's decay starts: the same
batches, the same LR, the same weights. The hook `horizon_branches.HorizonBranches` trains the
longest horizon as the run itself and, when it reaches that update, branches h's own decay off it:

- the whole run state is saved (`state.RunSnapshot`: weights, optimizer, generators, the data
  stream's position; the batches are drawn again, not held) and so is every hook's (`saved()`);
- the branch trains updates [branch_at, planned) of h's plan with h's own schedule
  (`Schedule.for_length`: its decay over the last `decay_fraction` of h, `final_fraction`
  included), through the trial's update function (the noise-scale measurement splits its batches
  in the branch as it would in the dedicated run);
- it evaluates at h's grid points inside the decay and at h's end, exactly where the dedicated
  run would; h's value is the best of the evaluations both share before the branch and the
  branch's own, with early stopping carried on from the run's state at the branch;
- the state is restored and the run goes on as if no branch had run.

So a horizon's value, curve, updates and examples are those of a dedicated run of its length
(tests/test_horizons.py compares them bit for bit on the CPU). This module plans them (no torch:
the ledger reserves their branches before a trial starts); `horizon_branches` trains them.

The pruner sees horizons, not grid points: after each horizon is finished (decayed), its value is
reported at its end step; the run's own evaluations are not reported. A run that stops before a
horizon's branch (early stopping, divergence) stops its dedicated run at the same evaluation: that
horizon records the run's state there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from objectives.training.budget import Budget, TrialPlan, eval_points, plan_trial
from objectives.training.schedule import Schedule


@dataclass(frozen=True)
class Horizon:
    """One length the run answers for, as its dedicated run would train it."""

    units: float  # the length, in the budget's unit
    plan: TrialPlan  # the dedicated run's plan
    schedule: Schedule  # the dedicated run's schedule
    branch_at: int  # updates of the run after which the branch leaves it (the first LR that differs)
    points: dict[int, int]  # the dedicated run's grid: updates done -> report step
    end_step: int  # the report step of its last update


@dataclass
class HorizonResult:
    """What a horizon's dedicated run would report, and what its branch cost beside the run."""

    units: float
    step: int  # its report step (the end of its length)
    value: float | None = None
    best_step: int | None = None
    value_se: float | None = None  # the best evaluation's standard error, when measured
    updates: int = 0
    examples: int = 0
    stop_reason: str = "budget"
    history: list[tuple[int, float]] = field(default_factory=list)
    branch_updates: int = 0  # trained for this horizon alone (0 for the run's own length)
    branch_examples: int = 0
    branch_seconds: float = 0.0


def plan_horizons(units: Sequence[float], budget: Budget, plan: TrialPlan, schedule: Schedule) -> list[Horizon]:
    """Every horizon but the run's own (the last of `units`), planned as a dedicated run."""
    horizons = []
    for length in units[:-1]:
        own = replace(budget, per_trial=length)
        own_plan = plan_trial(own, plan.n_train, plan.batch_size, None, plan.drop_last)
        own_schedule = schedule.for_length(own_plan.planned_updates)
        horizons.append(Horizon(length, own_plan, own_schedule, schedule.first_difference(own_schedule),
                                eval_points(own_plan, own), own.to_step(length, plan.n_train)))
    return horizons


def branches_planned(units: Sequence[float], budget: Budget, plan: TrialPlan, schedule: Schedule) -> float:
    """What the shorter horizons' branches will train, in the budget's unit: what the sweep-wide
    ledger reserves for them beside the run's own plan."""
    return sum(budget.planned(h.plan) - budget.planned(replace(h.plan, planned_updates=h.branch_at))
               for h in plan_horizons(units, budget, plan, schedule))
