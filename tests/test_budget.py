"""Counting formulas (REFERENCE.md): I = ceil(N/B) or floor with drop_last, S = I*E, examples = N*E."""

from __future__ import annotations

import math

import pytest

from sweeps.budget import (
    Budget,
    batch_lengths,
    examples_after,
    iterations_per_epoch,
    plan_trial,
    updates_within_examples,
)

N = 1438  # the digits training split


@pytest.mark.parametrize("batch_size", [1, 7, 16, 64, 100, 512, 1438, 2000])
def test_iterations_per_epoch(batch_size):
    assert iterations_per_epoch(N, batch_size) == math.ceil(N / batch_size)
    assert iterations_per_epoch(N, batch_size, drop_last=True) == N // batch_size


def test_batch_lengths_cover_the_epoch():
    assert sum(batch_lengths(N, 64)) == N
    assert batch_lengths(N, 64)[-1] == N % 64 == 30
    assert batch_lengths(N, 64, drop_last=True) == [64] * 22


def test_examples_after_whole_epochs_is_n_times_epochs():
    for batch_size in (16, 64, 500):
        per_epoch = iterations_per_epoch(N, batch_size)
        assert examples_after(3 * per_epoch, N, batch_size) == 3 * N
        assert examples_after(3 * per_epoch + 2, N, batch_size) == 3 * N + 2 * batch_size
    assert examples_after(22 * 2, N, 64, drop_last=True) == 2 * 22 * 64


def test_updates_within_examples_never_exceeds_the_budget():
    for batch_size in (16, 64, 500):
        for budget in (batch_size, N, 60000, 59999):
            updates = updates_within_examples(budget, N, batch_size)
            assert examples_after(updates, N, batch_size) <= budget
            assert examples_after(updates + 1, N, batch_size) > budget


def test_plan_in_updates_examples_and_epochs():
    plan = plan_trial(Budget("updates", 500, 50), N, 64)
    assert (plan.planned_updates, plan.stop_reason) == (500, "budget")
    assert plan.planned_epochs == pytest.approx(500 / 23)

    plan = plan_trial(Budget("examples", 60000, 6000), N, 64)
    assert plan.planned_updates == 41 * 23 + 16  # 41 full epochs (58958) + 1042 // 64
    assert plan.planned_examples == 59982

    plan = plan_trial(Budget("epochs", 2.5, 0.5), N, 64)
    assert plan.planned_updates == math.floor(2.5 * 23)
    assert plan.iterations_per_epoch == 23


def test_searched_epochs_cap_the_budget():
    budget = Budget("examples", 60000, 6000)
    short = plan_trial(budget, N, 64, epochs=5)
    assert (short.planned_updates, short.stop_reason) == (5 * 23, "epochs")
    assert short.planned_examples == 5 * N
    long = plan_trial(budget, N, 64, epochs=60)
    assert (long.planned_updates, long.stop_reason) == (959, "budget")


def test_seconds_budget_takes_the_measured_estimate():
    budget = Budget("seconds", 2.0, 0.5)
    assert budget.updates_cap(N, 64, False) is None
    assert plan_trial(budget, N, 64, updates_for_seconds=300).planned_updates == 300
    assert plan_trial(budget, N, 64, epochs=2, updates_for_seconds=300).planned_updates == 46


def test_report_steps_are_integers_on_one_scale():
    assert Budget("examples", 60000, 6000).to_step(6000, N) == 6000
    assert Budget("epochs", 10, 0.5).to_step(0.5, N) == 719  # examples: half of N
    assert Budget("seconds", 2, 0.25).to_step(0.25, N) == 250  # milliseconds


def test_drop_last_batch_larger_than_the_data_is_rejected():
    with pytest.raises(ValueError, match="exceeds"):
        plan_trial(Budget("updates", 10, 5), 100, 128, drop_last=True)
