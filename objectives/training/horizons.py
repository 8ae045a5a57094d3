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
the ledger reserves their branches before a trial starts) and keeps what they answer
(`HorizonAnswers`); `horizon_branches` trains a run alone's branches, the fused trainer
(`objectives.training.fused.trainer`) a fused group's.

The pruner sees horizons, not grid points: after each horizon is finished (decayed), its value is
reported at its end step; the run's own evaluations are not reported. A run that stops before a
horizon's branch (early stopping, divergence) stops its dedicated run at the same evaluation: that
horizon records the run's state there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


class HorizonAnswers:
    """One run's horizons as it trains: those still to branch, the run's evaluations (a horizon
    shares those before its branch), what each horizon answered (`results`, ascending) and the
    reporter (the pruner), which sees finished horizons and nothing else. The run trained alone
    (`horizon_branches.HorizonBranches`) and each member of a fused group
    (`objectives.training.fused.trainer`) keep one each; they differ only in how a branch trains."""

    def __init__(self, units: Sequence[float], budget: Budget, plan: TrialPlan, schedule: Schedule,
                 reporter: Callable[[float, int, float | None], bool] | None, sign: float):
        self.units, self.budget, self.n_train = tuple(units), budget, plan.n_train
        self.pending = plan_horizons(self.units, budget, plan, schedule)
        self.reporter, self.sign = reporter, sign
        self.evaluations: list[tuple[int, int, float, float | None]] = []  # the run's: (done, step, value, se)
        self.results: list[HorizonResult] = []

    def evaluated(self, done: int, step: int, value: float, se: float | None) -> None:
        self.evaluations.append((done, step, value, se))

    def due(self, done: int) -> Horizon | None:
        """The next horizon whose branch leaves the run after `done` updates (taken off the pending)."""
        if self.pending and self.pending[0].branch_at == done:
            return self.pending.pop(0)
        return None

    def shared(self, result: HorizonResult, done: int) -> HorizonResult:
        """The run's evaluations up to `done` updates, as the horizon's own."""
        for _, step, value, se in (e for e in self.evaluations if e[0] <= done):
            result.history.append((step, value))
            if math.isfinite(value) and (result.value is None or self.sign * (value - result.value) > 0):
                result.value, result.best_step, result.value_se = value, step, se
        return result

    def answer(self, result: HorizonResult, last: bool = False) -> bool:
        """Record a finished horizon and report it; True when the pruner stops the run. At the
        run's own length (`last`) the run is over: a decision to prune changes nothing."""
        self.results.append(result)
        if self.reporter is None or result.value is None:
            return False
        return self.reporter(result.value, result.step, result.value_se) and not last

    def finish(self, updates: int, examples: int, stop_reason: str) -> bool:
        """The run's own length, after any horizon the run stopped before (whose dedicated run
        stops at the same evaluation, for the same reason), from the run as it ended. True when
        the pruner stops it at one of those (the longer ones are not answered)."""
        if stop_reason == "pruned":
            return False  # a horizon's report stopped it: longer horizons are not answered
        pending, self.pending = self.pending, []
        for horizon in [*pending, None]:
            units = horizon.units if horizon is not None else self.units[-1]
            step = horizon.end_step if horizon is not None else self.budget.to_step(units, self.n_train)
            result = self.shared(HorizonResult(units, step), updates)
            result.updates, result.examples, result.stop_reason = updates, examples, stop_reason
            if self.answer(result, last=horizon is None):
                return True
        return False
