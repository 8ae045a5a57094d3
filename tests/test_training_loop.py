"""The trainer on real data: the report grid, budget caps, the schedule, best-not-last, stopping rules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from objectives.task import Task, TrialSettings
from objectives.tasks.regression import regression
from objectives.training.budget import Budget, examples_after, plan_trial
from objectives.training.loop import Trainer, eval_points
from objectives.training.options import EarlyStopping, TrainerOptions
from objectives.training.schedule import Schedule
from tests.tasks_for_tests import RecordingSGD

CPU = torch.device("cpu")


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
    assert 0.3 <= result.train_seconds < 2.0
    steps = [step for step, _ in result.history]
    assert steps[:3] == [100, 200, 300] and steps[-1] == 300  # milliseconds on one grid


@pytest.mark.parametrize("estimate", [20, 10**6], ids=["underestimated", "overestimated"])
def test_seconds_budget_schedule_follows_the_clock_whatever_the_estimate(estimate):
    """The updates a seconds budget plans come from a few timed updates; when throughput turns out
    different, the trial still trains to the time cap and its schedule still ends there."""
    budget = Budget("seconds", 0.3, 0.1)
    plan = plan_trial(budget, 300, 16, updates_for_seconds=estimate)
    schedule = Schedule.build(0.05, plan.planned_updates, 0.1, "linear", 0.1)
    task = regression_task()
    optimizer = RecordingSGD(task.model.parameters(), lr=0.05)
    result = Trainer(task, optimizer, schedule, plan, budget, TrainerOptions(maximize=False), seed=5).train()
    assert result.stop_reason == "budget" and 0.3 <= result.train_seconds < 2.0
    assert result.updates > 50, "an underestimate must not end the trial early"
    lrs = optimizer.lrs
    assert lrs[0] < 0.05 / 2 and max(lrs) == pytest.approx(0.05, rel=0.05)  # warmup, then the peak
    assert lrs[-1] == pytest.approx(0.005, abs=0.005), "the schedule ends when the time runs out"
    assert all(a >= b for a, b in zip(lrs[len(lrs) // 2 :], lrs[len(lrs) // 2 + 1 :]))  # decays


def test_lr_schedule_warms_up_and_ends_on_the_last_update():
    task = regression_task()
    budget = Budget("updates", 50, 50)
    plan = plan_trial(budget, 300, 32)
    schedule = Schedule.build(0.2, plan.planned_updates, 0.1, "linear", 0.05)
    optimizer = RecordingSGD(task.model.parameters(), lr=0.2)
    Trainer(task, optimizer, schedule, plan, budget, TrainerOptions(maximize=False), seed=1).train()
    lrs = optimizer.lrs
    assert len(lrs) == 50
    assert lrs[:5] == sorted(lrs[:5]) and lrs[0] < 0.2 / 4
    assert max(lrs) == pytest.approx(0.2)
    assert lrs[-1] == pytest.approx(0.2 * 0.05)


class Scripted(nn.Module):
    """A model whose validation metric follows a script: the n-th evaluation returns values[n]."""

    def __init__(self, values):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.values = list(values)
        self.evals = 0

    def forward(self, x):
        if not self.training:
            value = self.values[min(self.evals, len(self.values) - 1)]
            self.evals += 1
            return torch.full((len(x), 1), value) + 0 * self.weight
        return x[:, :1] * self.weight


def scripted_task(values) -> Task:
    x = torch.randn(64, 1)
    y = torch.zeros(64, 1)
    return Task(Scripted(values), (x, y), (x[:8], y[:8]), lambda p, t: ((p - t) ** 2).mean(),
                lambda p, t: p.mean())


def test_value_is_the_best_evaluation_not_the_last_and_its_weights_are_restored():
    task = regression_task()
    budget = Budget("updates", 60, 10)
    trainer = make_trainer(task, budget, 32, lr=0.05, maximize=False)
    weights_at = {}
    original = trainer.evaluate_and_report

    def spy(step):
        weights_at[step] = task.model.weight.detach().clone()
        return original(step)

    trainer.evaluate_and_report = spy
    result = trainer.train()
    values = dict(result.history)
    assert result.best_value == min(values.values())
    assert values[result.best_step] == result.best_value
    torch.testing.assert_close(task.model.weight, weights_at[result.best_step])
    metric = scripted_task([0.5, 0.9, 0.7, 0.6, 0.4, 0.3])
    result = make_trainer(metric, Budget("updates", 12, 2), 8, maximize=True).train()
    assert result.best_value == pytest.approx(0.9) and result.best_step == 4
    assert result.history[-1][1] == pytest.approx(0.3)


def test_early_stopping_ends_after_patience_evaluations_without_improvement():
    task = scripted_task([0.5, 0.8, 0.805, 0.79, 0.7, 0.9])
    rule = EarlyStopping(patience=3, min_delta=0.01)
    result = make_trainer(task, Budget("updates", 12, 2), 8, maximize=True, early_stopping=rule).train()
    assert result.stop_reason == "early_stopping"
    assert [s for s, _ in result.history] == [2, 4, 6, 8, 10]  # 0.805 is within min_delta
    assert result.best_value == pytest.approx(0.805)


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


def test_gradient_accumulation_matches_the_full_batch():
    full_task, split_task = regression_task(seed=3), regression_task(seed=3)
    budget = Budget("updates", 30, 10)
    full = make_trainer(full_task, budget, 64, momentum=0.9)
    split = make_trainer(split_task, budget, 64, momentum=0.9, max_micro_batch=20)
    full.train()
    split.train()
    assert (split.result.accumulation_steps, split.result.micro_batch) == (4, 16)
    assert split.result.updates == full.result.updates
    for name, value in full_task.model.state_dict().items():
        torch.testing.assert_close(split_task.model.state_dict()[name], value, rtol=1e-4, atol=1e-6)


def test_same_seed_same_run():
    runs = [make_trainer(regression_task(seed=2), Budget("updates", 30, 10), 32).train() for _ in range(2)]
    assert runs[0].history == runs[1].history
