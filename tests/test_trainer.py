"""The trainer: one trial's training loop (objectives.training.loop.Trainer) on real tasks.

What it specifies, in this order:

1. the report grid and the budget caps: evaluations at the first update past each grid point, in
   examples for an epochs budget, exact for an updates budget, searched epochs ending the trial first,
   and a seconds budget that stops on the clock;
2. the learning rate it really trains with: warmup, then a schedule that ends on the last update
   trained in every unit, a constant schedule, and a seconds budget whose schedule follows the clock;
3. best, not last: the trial's value is its best evaluation and the best weights are restored;
4. early stopping: patience evaluations without improvement, min_delta deciding only patience;
5. the other ways a trial stops early: the reporter prunes, a non-finite loss diverges at once;
6. gradient accumulation: micro-batches give the full batch's update;
7. determinism: the same seed gives the same run.

Expected numbers are computed here from the counting formulas (docs/background.md#counting), not from
objectives.training.budget; the overshoot task's metric follows a closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from objectives.task import Task, TrialSettings
from objectives.tasks.regression import regression
from objectives.training.budget import Budget, examples_after, plan_trial
from objectives.training.loop import Trainer, eval_points
from objectives.training.options import EarlyStopping, TrainerOptions
from objectives.training.schedule import Schedule
from tests.tasks_for_tests import RecordingSGD, overshoot, regression_small

CPU = torch.device("cpu")
N = 300  # the training set of both regression tasks: not a multiple of any batch size below


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


def regression_task(seed: int = 0, **options) -> Task:
    torch.manual_seed(seed)
    return regression(TrialSettings(32, 0.05, seed, CPU, options={"dim": 8, "n_train": 300, **options}))


def make_trainer(task: Task, budget: Budget, batch_size: int, lr: float = 0.05, *, epochs=None,
                 warmup: float = 0.0, shape: str = "cosine", final: float = 0.0, maximize: bool = False,
                 reporter=None, early_stopping=None, max_micro_batch=None, momentum: float = 0.0) -> Trainer:
    plan = plan_trial(budget, len(task.train[0]), batch_size, epochs)
    schedule = Schedule.build(lr, plan.planned_updates, warmup, shape, final)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=lr, momentum=momentum)
    options = TrainerOptions(maximize=maximize, early_stopping=early_stopping, max_micro_batch=max_micro_batch)
    return Trainer(task, optimizer, schedule, plan, budget, options, seed=5, reporter=reporter)


# --- 1. the report grid and the budget caps ---------------------------------------------------

def test_grid_points_are_reached_at_the_first_update_past_them():
    plan = plan_trial(Budget("examples", 3000, 600), 300, 64)
    points = eval_points(plan, Budget("examples", 3000, 600))
    assert list(points.values()) == [600, 1200, 1800, 2400, 3000]
    for after, step in points.items():
        assert examples_after(after, 300, 64) >= step > examples_after(after - 1, 300, 64)


def test_epochs_budget_reports_in_examples():
    result = make_trainer(regression_task(), Budget("epochs", 3, 1), 64).train()
    assert [step for step, _ in result.history] == [300, 600, 900]
    assert result.updates == 3 * math.ceil(300 / 64)
    assert result.examples_seen == 900


def test_updates_budget_is_exact():
    result = make_trainer(regression_task(), Budget("updates", 25, 5), 64).train()
    assert result.updates == 25
    assert [step for step, _ in result.history] == [5, 10, 15, 20, 25]


def test_searched_epochs_end_before_the_budget():
    result = make_trainer(regression_task(), Budget("examples", 3000, 600), 64, epochs=2).train()
    assert result.stop_reason == "epochs"
    assert result.examples_seen == 600
    assert result.history[-1][0] == 600


def test_seconds_budget_stops_on_time():
    budget = Budget("seconds", 0.3, 0.1)
    trainer = make_trainer(regression_task(), budget, 16)
    trainer.plan = plan_trial(budget, 300, 16, updates_for_seconds=10**7)
    result = trainer.train()
    assert result.stop_reason == "budget"
    # the clock stopped it: the plan's 10**7 updates would take many minutes, so 10 s of slack
    # past the cap (generous for a loaded machine) still tells
    assert 0.3 <= result.train_seconds < 0.3 + 10
    steps = [step for step, _ in result.history]
    assert steps[:3] == [100, 200, 300] and steps[-1] == 300  # milliseconds on one grid


# --- 2. the learning rate it trains with: warmup and the end of the schedule ------------------

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


@pytest.mark.parametrize("estimate", [20, 10**6], ids=["underestimated", "overestimated"])
def test_seconds_budget_schedule_follows_the_clock_whatever_the_estimate(estimate):
    """The updates a seconds budget plans come from a few timed updates; when throughput turns out
    different, the trial still trains to the time cap and its schedule still ends there. (1 s, not
    0.3 s: under a loaded CI machine 0.3 s held too few updates to see the schedule's shape.)"""
    budget = Budget("seconds", 1.0, 0.25)
    plan = plan_trial(budget, 300, 16, updates_for_seconds=estimate)
    schedule = Schedule.build(0.05, plan.planned_updates, 0.1, "linear", 0.1)
    task = regression_task()
    optimizer = RecordingSGD(task.model.parameters(), lr=0.05)
    result = Trainer(task, optimizer, schedule, plan, budget, TrainerOptions(maximize=False), seed=5).train()
    assert result.stop_reason == "budget" and 1.0 <= result.train_seconds < 1.0 + 10  # as above: generous
    assert result.updates > 50, "an underestimate must not end the trial early"
    lrs = optimizer.lrs
    assert lrs[0] < 0.05 / 2 and max(lrs) == pytest.approx(0.05, rel=0.05)  # warmup, then the peak
    assert lrs[-1] == pytest.approx(0.005, abs=0.005), "the schedule ends when the time runs out"
    assert all(a >= b for a, b in zip(lrs[len(lrs) // 2 :], lrs[len(lrs) // 2 + 1 :]))  # decays


# --- 3. best, not last ---------------------------------------------------------------------------

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


# --- 4. early stopping ---------------------------------------------------------------------------

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


# --- 5. pruned by the reporter, diverged on a non-finite loss ------------------------------------

def test_reporter_can_prune():
    seen = []

    def reporter(value, step, value_se):
        seen.append(step)
        return step >= 20

    result = make_trainer(regression_task(), Budget("updates", 60, 10), 32, reporter=reporter).train()
    assert result.stop_reason == "pruned"
    assert seen == [10, 20] and result.updates == 20


def test_nan_loss_stops_at_once_as_diverged():
    task = regression_task()
    x = task.train[0].clone()  # the dataset is cached per process: never poison it in place
    x[7] = float("inf")  # reached in the first epoch
    task.train = (x, task.train[1])
    result = make_trainer(task, Budget("updates", 100, 50), 30).train()
    assert result.stop_reason == "diverged"
    assert result.updates <= math.ceil(300 / 30)
    assert result.history == []


def test_huge_learning_rate_diverges():
    result = make_trainer(regression_task(), Budget("updates", 200, 100), 32, lr=1e6).train()
    assert result.stop_reason == "diverged" and result.updates < 100


# --- 6. gradient accumulation --------------------------------------------------------------------

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


# --- 7. determinism ------------------------------------------------------------------------------

def test_same_seed_same_run():
    runs = [make_trainer(regression_task(seed=2), Budget("updates", 30, 10), 32).train() for _ in range(2)]
    assert runs[0].history == runs[1].history
