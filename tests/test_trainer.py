"""objectives.training.loop.Trainer on real tasks: the LR it really trains with, best-not-last with the best
weights restored, early stopping with min_delta, and gradient accumulation against the full batch.

Expected numbers are computed here from the counting formulas (docs/background.md#counting), not from
objectives.training.budget.
"""

from __future__ import annotations

import math

import pytest
import torch

from objectives.task import TrialSettings
from objectives.training.budget import Budget, plan_trial
from objectives.training.loop import Trainer
from objectives.training.options import EarlyStopping, TrainerOptions
from objectives.training.schedule import Schedule
from tests.tasks_for_tests import RecordingSGD, overshoot, regression_small

CPU = torch.device("cpu")


def settings(seed: int = 0, **options) -> TrialSettings:
    return TrialSettings(batch_size=32, lr=0.05, seed=seed, device=CPU, options=options)


def batches_of_epoch(n: int, batch_size: int) -> list[int]:
    return [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])


def updates_within(examples: int, n: int, batch_size: int) -> tuple[int, int]:
    """Walk the epochs batch by batch: the updates whose examples fit the budget, and those examples."""
    updates = seen = 0
    while True:
        for size in batches_of_epoch(n, batch_size):
            if seen + size > examples:
                return updates, seen
            updates, seen = updates + 1, seen + size


# --- warmup and the end of the schedule ----------------------------------------------------------

N = 300  # regression_small's training set: not a multiple of any batch size below


@pytest.mark.parametrize(
    ("budget", "batch_size", "epochs", "expected_updates"),
    [
        (Budget("updates", 50, 10), 32, None, 50),
        # 2000 examples at B = 32 on N = 300: 6 epochs of 10 updates (300 examples each), then 6 of 32
        (Budget("examples", 2000, 500), 32, None, updates_within(2000, N, 32)[0]),
        # 2.5 epochs at I = ceil(300 / 32) = 10: 25 updates
        (Budget("epochs", 2.5, 0.5), 32, None, 25),
        # searched epochs end the trial before the budget: 2 epochs x 10 updates
        (Budget("examples", 3000, 500), 32, 2, 20),
    ],
    ids=["updates", "examples", "epochs", "epochs-searched"],
)
@pytest.mark.parametrize("shape", ["cosine", "linear"])
def test_warmup_ramps_and_the_schedule_ends_on_the_last_update_trained(budget, batch_size, epochs,
                                                                       expected_updates, shape):
    assert updates_within(2000, N, 32) == (66, 1992)  # the walk itself, by hand
    task = regression_small(settings())
    peak, final, warmup_fraction = 0.08, 0.1, 0.2
    plan = plan_trial(budget, N, batch_size, epochs)
    schedule = Schedule.build(peak, plan.planned_updates, warmup_fraction, shape, final)
    optimizer = RecordingSGD(task.model.parameters(), lr=peak)
    result = Trainer(task, optimizer, schedule, plan, budget, TrainerOptions(maximize=False), seed=1).train()

    lrs = optimizer.lrs
    assert len(lrs) == result.updates == plan.planned_updates == expected_updates
    warmup = round(warmup_fraction * expected_updates)
    assert warmup >= 2
    ramp = lrs[: warmup + 1]
    assert 0 < ramp[0] < peak / 2
    assert all(a < b for a, b in zip(ramp, ramp[1:])), f"warmup is not increasing: {ramp}"
    assert max(lrs) == pytest.approx(peak) and lrs[warmup] == pytest.approx(peak)
    decay = lrs[warmup:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert lrs[-1] == pytest.approx(peak * final), "the schedule must end exactly on the last update"
    assert lrs[-2] > peak * final * (1 + 1e-6)  # ...and not before it
    if shape == "linear":  # equal steps down from the peak to the final value
        steps = [a - b for a, b in zip(decay, decay[1:])]
        assert steps == pytest.approx([(peak - peak * final) / (len(decay) - 1)] * len(steps))
    if budget.unit == "examples" and epochs is None:
        assert result.examples_seen == updates_within(2000, N, 32)[1]


def test_constant_schedule_without_warmup_trains_every_update_at_the_peak():
    task = regression_small(settings())
    budget = Budget("updates", 20, 10)
    plan = plan_trial(budget, N, 64)
    optimizer = RecordingSGD(task.model.parameters(), lr=1.0)
    Trainer(task, optimizer, Schedule.build(0.03, 20, 0.0, "constant", 0.0), plan, budget,
            TrainerOptions(maximize=False), seed=0).train()
    assert optimizer.lrs == [0.03] * 20


# --- best, not last --------------------------------------------------------------------------------

def overshoot_weight(updates: int, lr: float = 0.05) -> float:
    """w_k = 2 - 2 (1 - 2 lr)^k: SGD on mean((w x - 2x)^2) with x = +-1, from w = 0."""
    return 2 - 2 * (1 - 2 * lr) ** updates


def overshoot_metric(updates: int) -> float:
    return -((overshoot_weight(updates) - 1) ** 2)  # validation targets y = x = 1


def overshoot_trainer(early_stopping: EarlyStopping | None = None, updates: int = 30) -> tuple[Trainer, object]:
    task = overshoot(settings())
    budget = Budget("updates", updates, 2)
    plan = plan_trial(budget, len(task.train[0]), 8)
    schedule = Schedule.build(0.05, plan.planned_updates, 0.0, "constant", 0.0)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.05)
    trainer = Trainer(task, optimizer, schedule, plan, budget,
                      TrainerOptions(maximize=True, early_stopping=early_stopping), seed=3)
    return trainer, task


def test_value_is_the_best_evaluation_and_the_best_weights_are_restored():
    trainer, task = overshoot_trainer()
    result = trainer.train()
    steps = [s for s, _ in result.history]
    assert steps == list(range(2, 31, 2))
    for step, value in result.history:  # real training follows the closed form
        assert value == pytest.approx(overshoot_metric(step), abs=1e-5)
    values = [v for _, v in result.history]
    assert result.best_step == 6 and result.best_value == max(values)
    assert result.best_value > values[-1] + 0.5, "the metric peaks and then degrades"
    assert result.stop_reason == "budget" and result.updates == 30
    # the model handed back holds the weights of update 6, not of update 30
    assert task.model.weight.item() == pytest.approx(overshoot_weight(6), abs=1e-5)
    with torch.no_grad():
        again = task.metric(task.model(task.val[0]), task.val[1]).item()
    assert again == pytest.approx(result.best_value, abs=1e-7)


# --- early stopping --------------------------------------------------------------------------------

def test_early_stopping_stops_after_patience_evaluations_and_keeps_the_best():
    trainer, task = overshoot_trainer(EarlyStopping(patience=3, min_delta=0.0))
    result = trainer.train()
    assert result.stop_reason == "early_stopping"
    assert [s for s, _ in result.history] == [2, 4, 6, 8, 10, 12]  # best at 6, then 3 worse
    assert result.updates == 12 < 30
    assert result.best_step == 6
    assert result.best_value == pytest.approx(overshoot_metric(6), abs=1e-5)
    assert task.model.weight.item() == pytest.approx(overshoot_weight(6), abs=1e-5)


def test_an_improvement_below_min_delta_does_not_reset_patience():
    # metric at steps 2, 4, 6, 8: -0.384, -0.097, -0.004, -0.019; 6 improves on 4 by 0.094 < 0.1
    assert overshoot_metric(6) - overshoot_metric(4) < 0.1 < overshoot_metric(4) - overshoot_metric(2)
    trainer, _ = overshoot_trainer(EarlyStopping(patience=3, min_delta=0.1))
    result = trainer.train()
    assert result.stop_reason == "early_stopping"
    assert [s for s, _ in result.history] == [2, 4, 6, 8, 10]
    assert result.best_step == 6  # the best is still the best, min_delta only decides patience


# --- gradient accumulation ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("batch_size", "max_micro_batch", "steps", "micro"),
    [(64, 16, 4, 16), (54, 16, 4, 14), (120, 33, 4, 30), (64, 64, 1, 64)],
)
@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_micro_batches_give_the_full_batch_update(batch_size, max_micro_batch, steps, micro, optimizer_name):
    """N = 300 is no multiple of these batch sizes, so the short last batch is split too; 54 splits
    unevenly (14, 14, 13, 13 and, for the last batch of 30, 8, 8, 7, 7)."""

    def run(limit):
        torch.manual_seed(0)  # the same initial weights in both runs
        task = regression_small(settings(seed=7))
        with torch.no_grad():
            untrained = task.metric(task.model(task.val[0]), task.val[1]).item()
        budget = Budget("epochs", 4, 1)
        plan = plan_trial(budget, N, batch_size)
        lr = 0.05 if optimizer_name == "sgd" else 0.1
        if optimizer_name == "sgd":
            optimizer = torch.optim.SGD(task.model.parameters(), lr=lr, momentum=0.9)
        else:
            optimizer = torch.optim.Adam(task.model.parameters(), lr=lr)
        schedule = Schedule.build(lr, plan.planned_updates, 0.1, "cosine", 0.0)
        trainer = Trainer(task, optimizer, schedule, plan, budget,
                          TrainerOptions(maximize=False, max_micro_batch=limit), seed=11)
        return trainer.train(), task, untrained

    full, full_task, untrained = run(None)
    split, split_task, _ = run(max_micro_batch)
    assert (split.accumulation_steps, split.micro_batch) == (steps, micro)
    assert full.accumulation_steps == 1
    assert split.updates == full.updates == 4 * math.ceil(N / batch_size)
    assert split.examples_seen == full.examples_seen == 4 * N
    assert full.best_value < untrained / 2, "the run must really train"
    for name, value in full_task.model.state_dict().items():
        torch.testing.assert_close(split_task.model.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    assert [s for s, _ in split.history] == [s for s, _ in full.history] == [N, 2 * N, 3 * N, 4 * N]
    for (_, a), (_, b) in zip(split.history, full.history):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
