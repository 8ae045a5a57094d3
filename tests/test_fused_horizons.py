"""Horizons in a fused group (objectives/training/fused/trainer.py, issue 26 with issue 24): each
member answers every length as its run alone answers it (`Trainer` with `HorizonBranches`).

A group of one is its run alone exactly: every horizon's value, best step, curve, updates,
examples, stop reason and branch counts. K > 1 members differ from their runs alone only as fused
members do without horizons (tests/test_fused.py: curves within one validation example on the bmm
path); their counts, steps and stop reasons are exact. Branches leave the group as they found it:
the members' own runs are bit for bit those of the same group without horizons.
"""

from __future__ import annotations

import pytest
import torch

from objectives.tasks.digits import digits_mlp
from objectives.training.budget import Budget, plan_trial
from objectives.training.fused import FusedMember, FusedTrainer, MemberOptimizer
from objectives.training.horizons import HorizonResult
from objectives.training.loop import Trainer, TrainResult
from objectives.training.options import EarlyStopping, TrainerOptions
from objectives.training.schedule import Schedule
from tests.test_fused import build, torch_optimizer, weights

BUDGET = Budget("updates", 120, 10)
LENGTHS = (30, 55, 80, 120)  # the last is the run's own
SGD = MemberOptimizer("sgd", momentum=0.9, weight_decay=1e-3)
ADAMW = MemberOptimizer("adamw", betas=(0.85, 0.99), weight_decay=0.05)


def options(horizons=LENGTHS, patience: EarlyStopping | None = None) -> TrainerOptions:
    return TrainerOptions(maximize=True, early_stopping=patience, horizons=horizons)


def member(seed: int, lr: float, optimizer: MemberOptimizer = SGD, warmup: int = 6, final: float = 0.0,
           reporter=None, budget: Budget = BUDGET) -> FusedMember:
    """A wsd member with an absolute warmup, as a study with horizons builds it."""
    task = build(digits_mlp, seed, 16)
    plan = plan_trial(budget, task.n_train, 16)
    schedule = Schedule.build(lr, plan.planned_updates, 0.0, "wsd", final, 0.25, warmup_updates=warmup)
    return FusedMember(task, optimizer, schedule, plan, seed, reporter)


def alone(m: FusedMember, opts: TrainerOptions, reporter=None, budget: Budget = BUDGET) -> tuple[TrainResult, list]:
    """The member's run alone, horizons branched by `HorizonBranches`: its result and weights."""
    task = build(digits_mlp, m.seed, 16)
    optimizer = torch_optimizer(m.optimizer, task.model.parameters(), m.schedule.peak_lr)
    result = Trainer(task, optimizer, m.schedule, m.plan, budget, opts, seed=m.seed, reporter=reporter).train()
    return result, weights(task.model)


def counts(h: HorizonResult) -> tuple:
    return (h.units, h.step, h.best_step, h.updates, h.examples, h.stop_reason, h.branch_updates,
            h.branch_examples, [s for s, _ in h.history])


def assert_horizons_as_alone(fused: TrainResult, solo: TrainResult, n_val: int, examples: float) -> None:
    assert [counts(h) for h in fused.horizons] == [counts(h) for h in solo.horizons]
    for f, s in zip(fused.horizons, solo.horizons, strict=True):
        assert [v for _, v in f.history] == pytest.approx([v for _, v in s.history], abs=(examples + 0.01) / n_val)
        assert f.value == pytest.approx(s.value, abs=(examples + 0.01) / n_val)
    assert (fused.updates, fused.examples_seen, fused.stop_reason) == (solo.updates, solo.examples_seen,
                                                                       solo.stop_reason)
    assert fused.horizon_seconds > 0 and fused.train_seconds > 0


def options_with(**settings) -> TrainerOptions:
    return TrainerOptions(maximize=True, horizons=LENGTHS, **settings)


@pytest.mark.parametrize("opts", [options(), options_with(max_micro_batch=6), options_with(precision="bf16")],
                         ids=["fp32", "micro_batches", "bf16"])
def test_a_group_of_one_answers_every_horizon_as_its_run_alone_exactly(opts):
    m = member(11, 0.1, final=0.1)
    (fused,) = FusedTrainer([m], BUDGET, opts).train()
    solo, solo_weights = alone(m, opts)
    assert [h.units for h in fused.horizons] == list(LENGTHS)
    assert [counts(h) for h in fused.horizons] == [counts(h) for h in solo.horizons]
    assert [(h.value, h.history) for h in fused.horizons] == [(h.value, h.history) for h in solo.horizons]
    assert (fused.best_value, fused.history) == (solo.best_value, solo.history)
    assert all(0 < h.branch_updates < h.updates for h in fused.horizons[:-1])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(weights(m.task.model), solo_weights))


@pytest.mark.parametrize("optimizer", [SGD, ADAMW], ids=lambda o: o.name)
def test_members_with_their_own_warmups_branch_where_their_runs_alone_branch(optimizer):
    """Warmups of 0, 6 and 28 updates (past the shortest horizon's decay start) move the members'
    branch points apart; early stopping is
    carried into each branch from its member's run."""
    lrs = (0.05, 0.2, 0.1) if optimizer is SGD else (1e-3, 4e-3, 2e-3)
    members = [member(21 + i, lr, optimizer, warmup=w, final=f)
               for i, (lr, w, f) in enumerate(zip(lrs, (0, 6, 28), (0.0, 0.1, 0.0)))]
    opts = options(patience=EarlyStopping(2, 0.01))
    results = FusedTrainer(members, BUDGET, opts).train()
    n_val = len(members[0].task.val[0])
    branch_points = set()
    for m, fused in zip(members, results):
        solo, _ = alone(m, opts)
        assert_horizons_as_alone(fused, solo, n_val, examples=1)
        branch_points.add(tuple(h.updates - h.branch_updates for h in fused.horizons[:-1]))
    assert len(branch_points) > 1  # the members did branch at different updates


def test_each_horizon_carries_its_best_evaluations_standard_error_as_alone():
    """measure.value_se with horizons: a group of one answers each horizon with its run alone's
    standard error exactly (a branch's own best, or a shared evaluation's); three members theirs
    within what one validation example moves it."""
    opts = options_with(measure_value_se=True)
    m = member(11, 0.1, final=0.1)
    (fused,) = FusedTrainer([m], BUDGET, opts).train()
    solo, _ = alone(m, opts)
    assert [(h.value, h.best_step, h.value_se) for h in fused.horizons] == \
        [(h.value, h.best_step, h.value_se) for h in solo.horizons]
    assert all(h.value_se is not None and h.value_se > 0 for h in fused.horizons)
    assert fused.value_se_curve == solo.value_se_curve
    members = [member(21 + i, lr) for i, lr in enumerate((0.05, 0.2, 0.1))]
    n_val = len(members[0].task.val[0])
    for m, fused in zip(members, FusedTrainer(members, BUDGET, opts).train()):
        solo, _ = alone(m, opts)
        assert [h.value_se for h in fused.horizons] == pytest.approx([h.value_se for h in solo.horizons],
                                                                   abs=1.01 / n_val)


def test_with_the_noise_scale_each_branch_splits_its_batches_where_its_dedicated_run_would():
    """measure.noise_scale with horizons: a branch measures (so splits its batches) on the updates
    its dedicated run would, from a copy of its member's averages; a group of one answers every
    horizon and records its curve as its run alone exactly; three members within one example (at
    LRs the runs are stable at: at 0.2 one oscillates, and the measured updates' other rounding
    grows into a different trajectory)."""
    opts = options_with(measure_noise=True)
    m = member(11, 0.1, final=0.1)
    (fused,) = FusedTrainer([m], BUDGET, opts).train()
    solo, _ = alone(m, opts)
    assert [(counts(h), h.value, h.history) for h in fused.horizons] == \
        [(counts(h), h.value, h.history) for h in solo.horizons]
    assert fused.noise_scale_curve == solo.noise_scale_curve and len(solo.noise_scale_curve) > 3
    members = [member(21 + i, lr) for i, lr in enumerate((0.05, 0.1, 0.08))]
    n_val = len(members[0].task.val[0])
    for m, fused in zip(members, FusedTrainer(members, BUDGET, opts).train()):
        solo, _ = alone(m, opts)
        assert_horizons_as_alone(fused, solo, n_val, examples=1)


def test_branches_leave_the_group_as_it_was():
    """The members' own runs with horizons are bit for bit the same group's runs without them."""
    with_horizons = [member(31 + i, lr) for i, lr in enumerate((0.05, 0.2, 0.1))]
    without = [member(31 + i, lr) for i, lr in enumerate((0.05, 0.2, 0.1))]
    a = FusedTrainer(with_horizons, BUDGET, options()).train()
    b = FusedTrainer(without, BUDGET, options(horizons=None)).train()
    for x, y, m, n in zip(a, b, with_horizons, without):
        assert (x.history, x.best_value, x.updates, x.stop_reason) == (y.history, y.best_value, y.updates,
                                                                       y.stop_reason)
        assert all(torch.equal(p, q) for p, q in zip(weights(m.task.model), weights(n.task.model)))
        assert x.horizons[-1].history == y.history and y.horizons is None


def test_the_pruner_sees_each_members_finished_horizons_only():
    """Member 0's pruner stops it at its second horizon: it reported the horizons' ends, not the
    grid, and the others answer every horizon as if it had never been there."""
    reports: list[tuple[int, float]] = []

    def prune_second(value, step, se):
        reports.append((step, value))
        return len(reports) == 2

    seen: dict[int, list[int]] = {1: [], 2: []}
    members = [member(41, 0.1, reporter=prune_second)] + [
        member(41 + i, lr, reporter=lambda v, step, se, i=i: seen[i].append(step) or False)
        for i, lr in ((1, 0.05), (2, 0.2))]
    results = FusedTrainer(members, BUDGET, options()).train()
    assert [step for step, _ in reports] == [30, 55]
    assert results[0].stop_reason == "pruned" and results[0].updates < 80
    assert [h.units for h in results[0].horizons] == [30, 55]
    assert [v for _, v in reports] == [h.value for h in results[0].horizons]
    assert seen[1] == seen[2] == list(LENGTHS)
    others = FusedTrainer([member(42, 0.05), member(43, 0.2)], BUDGET, options()).train()
    for x, y in zip(results[1:], others):
        assert [(h.value, h.history) for h in x.horizons] == [(h.value, h.history) for h in y.horizons]


def test_a_refill_answers_its_horizons_as_its_run_alone():
    """Four trials in two slots: the two that join later branch on their own counts."""
    budget = Budget("updates", 60, 10)
    lengths = (20, 40, 60)
    queue = [member(53, 0.1, budget=budget), member(54, 0.2, budget=budget)]
    first = [member(51, 0.05, budget=budget), member(52, 0.02, budget=budget, reporter=lambda v, s, se: s == 20)]
    members = first + list(queue)
    trainer = FusedTrainer(first, budget, options(lengths), refill=lambda: queue.pop(0) if queue else None)
    results = trainer.train()
    assert len(results) == 4 and results[1].stop_reason == "pruned"
    n_val = len(members[0].task.val[0])
    for m, fused in zip(members, results):
        reporter = (lambda v, s, se: s == 20) if m is first[1] else None
        solo, _ = alone(m, options(lengths), reporter=reporter, budget=budget)
        assert_horizons_as_alone(fused, solo, n_val, examples=1)


def test_a_member_diverging_in_its_run_or_in_a_branch_answers_as_alone_and_the_others_go_on():
    """A member whose LR diverges answers what its run alone answers (the horizons it reached,
    then the others from its run as it stopped), and the two calm members are unchanged by it."""
    calm = [member(71, 0.05), member(73, 0.1)]
    wild = member(72, 5.0)
    results = FusedTrainer([calm[0], wild, calm[1]], BUDGET, options()).train()
    solo, _ = alone(wild, options())
    # here: horizon 30 finished, 55's branch diverged, the run diverged before 80's branch point
    assert [(h.stop_reason, h.branch_updates > 0) for h in results[1].horizons] == [
        ("budget", True), ("diverged", True), ("diverged", False), ("diverged", False)]
    assert [counts(h) for h in results[1].horizons] == [counts(h) for h in solo.horizons]
    assert (results[1].stop_reason, results[1].updates) == (solo.stop_reason, solo.updates)
    without = FusedTrainer([member(71, 0.05), member(73, 0.1)], BUDGET, options()).train()
    for x, y in zip([results[0], results[2]], without):
        assert [(h.value, h.history) for h in x.horizons] == [(h.value, h.history) for h in y.horizons]
