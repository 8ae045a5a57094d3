"""Counting formulas (docs/background.md#counting): I = ceil(N/B) or floor with drop_last, S = I*E, examples = N*E."""

from __future__ import annotations

import math

import pytest

from objectives.training.budget import (
    Budget,
    batch_lengths,
    examples_after,
    iterations_per_epoch,
    plan_trial,
    updates_within_examples,
)

N = 1438  # the digits training split


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
    assert Budget("epochs", 10, 0.5).to_step(2.5, N) == 3595  # 2.5 x 1438
    assert Budget("seconds", 2, 0.25).to_step(0.25, N) == 250  # milliseconds
    assert Budget("updates", 100, 10).to_step(30, N) == 30


def test_drop_last_batch_larger_than_the_data_is_rejected():
    with pytest.raises(ValueError, match="exceeds"):
        plan_trial(Budget("updates", 10, 5), 100, 128, drop_last=True)


# --- Hand-checked values on the digits split (N = 1438), from docs/background.md's counting formulas ---


@pytest.mark.parametrize(
    ("batch_size", "ceil_i", "floor_i"),
    [(1, 1438, 1438), (7, 206, 205), (16, 90, 89), (64, 23, 22), (100, 15, 14), (512, 3, 2), (1438, 1, 1),
     (2000, 1, 0)],
)
def test_iterations_per_epoch_by_hand(batch_size, ceil_i, floor_i):
    assert iterations_per_epoch(N, batch_size) == ceil_i
    assert iterations_per_epoch(N, batch_size, drop_last=True) == floor_i


def test_updates_are_iterations_times_epochs_and_examples_are_n_times_epochs():
    for batch_size, per_epoch in ((16, 90), (64, 23), (512, 3)):
        for epochs in (1, 2, 7):
            plan = plan_trial(Budget("updates", 10**6, 1000), N, batch_size, epochs=epochs)
            assert plan.planned_updates == per_epoch * epochs  # S = I * E
            assert plan.planned_examples == N * epochs  # not reduced by B
            assert plan.planned_epochs == epochs


def test_examples_after_counts_the_short_last_batch():
    # 22 full batches of 64 (1408 examples), then a last batch of 30.
    assert examples_after(0, N, 64) == 0
    assert examples_after(22, N, 64) == 1408
    assert examples_after(23, N, 64) == 1438  # not 23 * 64 = 1472
    assert examples_after(24, N, 64) == 1438 + 64  # the next epoch starts a full batch
    # drop_last: 22 batches of 64 per epoch, the 30 left-over examples are never seen.
    assert examples_after(22, N, 64, drop_last=True) == 1408
    assert examples_after(23, N, 64, drop_last=True) == 1408 + 64


def test_updates_within_examples_by_hand():
    assert updates_within_examples(63, N, 64) == 0  # cannot hold one batch
    assert updates_within_examples(64, N, 64) == 1
    assert updates_within_examples(1437, N, 64) == 22  # the 23rd needs the 1438th example
    assert updates_within_examples(1438, N, 64) == 23
    # drop_last: an epoch is 22 x 64 = 1408 examples.
    assert updates_within_examples(2 * 1408 + 63, N, 64, drop_last=True) == 44
    assert updates_within_examples(2 * 1408 + 64, N, 64, drop_last=True) == 45


def test_example_budget_plans_by_hand():
    budget = Budget("examples", 60000, 6000)
    # 60000 = 41 x 1438 + 1042: 41 epochs, then 1042 // B more full batches.
    for batch_size, updates, examples in ((16, 41 * 90 + 65, 59998), (64, 959, 59982), (512, 125, 59982)):
        plan = plan_trial(budget, N, batch_size)
        assert (plan.planned_updates, plan.planned_examples, plan.stop_reason) == (updates, examples, "budget")
        assert 60000 - batch_size < plan.planned_examples <= 60000  # equal compute, within one batch
    # drop_last, B = 64: 60000 = 42 x 1408 + 864 -> 42 x 22 + 13 updates.
    plan = plan_trial(budget, N, 64, drop_last=True)
    assert (plan.planned_updates, plan.planned_examples) == (42 * 22 + 13, 42 * 1408 + 13 * 64)
    # A batch larger than the data (no drop_last): every update is one whole epoch of N examples.
    plan = plan_trial(budget, N, 2000)
    assert (plan.iterations_per_epoch, plan.planned_updates, plan.planned_examples) == (1, 41, 41 * N)


def test_update_budget_gives_fractional_epochs():
    plan = plan_trial(Budget("updates", 50, 10), N, 64)
    assert plan.planned_updates == 50
    assert plan.planned_epochs == pytest.approx(50 / 23)  # 2.17 epochs
    assert plan.planned_examples == 2 * N + 4 * 64


def test_fractional_epoch_budget_is_exact_despite_floating_point():
    # E * I in floats can land just below an integer (0.7 * 90 = 62.999...): the plan must not lose an update.
    assert plan_trial(Budget("epochs", 0.7, 0.1), N, 16).planned_updates == 63
    assert plan_trial(Budget("epochs", 0.5, 0.1), N, 64).planned_updates == 11  # floor(11.5)
    for tenths in range(1, 60):
        for batch_size in (1, 7, 16, 64, 100, 512):
            plan = plan_trial(Budget("epochs", tenths / 10, 0.1), N, batch_size)
            assert plan.planned_updates == tenths * iterations_per_epoch(N, batch_size) // 10


@pytest.mark.parametrize(
    ("budget", "epochs", "updates", "reason"),
    [
        (Budget("updates", 100, 10), 2, 46, "epochs"),  # 2 x 23 < 100
        (Budget("updates", 100, 10), 5, 100, "budget"),  # 5 x 23 > 100
        (Budget("epochs", 2.5, 0.5), 2, 46, "epochs"),
        (Budget("epochs", 2.5, 0.5), 3, 57, "budget"),  # floor(2.5 x 23)
        (Budget("examples", 3000, 300), 1, 23, "epochs"),
        (Budget("examples", 3000, 300), 3, 2 * 23 + 1, "budget"),  # 3000 = 2 x 1438 + 124
        (Budget("seconds", 5, 1), 2, 46, "epochs"),
        (Budget("seconds", 5, 1), 20, 300, "budget"),
    ],
)
def test_min_of_epochs_and_budget(budget, epochs, updates, reason):
    plan = plan_trial(budget, N, 64, epochs=epochs, updates_for_seconds=300)
    assert (plan.planned_updates, plan.stop_reason) == (updates, reason)


def test_budget_caps_in_each_unit_do_not_depend_on_epochs_given_or_not():
    for budget in (Budget("updates", 77, 7), Budget("examples", 5000, 500), Budget("epochs", 1.5, 0.5)):
        for batch_size in (16, 64, 512):
            free = plan_trial(budget, N, batch_size)
            capped = plan_trial(budget, N, batch_size, epochs=1000)
            assert free.planned_updates == capped.planned_updates == budget.updates_cap(N, batch_size, False)
            assert free.stop_reason == capped.stop_reason == "budget"
