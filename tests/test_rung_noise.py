"""Rung noise: the standard error of an evaluation, measured in the evaluation pass."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from objectives.task import Task, TrialSettings, accuracy
from objectives.tasks.regression import regression
from objectives.training.budget import Budget, plan_trial
from objectives.training.loop import Trainer
from objectives.training.schedule import Schedule

CPU = torch.device("cpu")


def trainer_for(task: Task, *, measure_value_se: bool = True, reporter=None, eval_batch_size: int = 64,
                maximize: bool = True, budget: Budget | None = None) -> Trainer:
    budget = budget or Budget("updates", 4, 2)
    plan = plan_trial(budget, task.n_train, 8)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.0)
    return Trainer(task, optimizer, Schedule.build(0.0, plan.planned_updates, 0.0, "constant", 0.0), plan, budget,
                   maximize=maximize, seed=1, reporter=reporter, eval_batch_size=eval_batch_size,
                   measure_value_se=measure_value_se)


def scripted_accuracy_task(n_val: int, correct: int, metric=accuracy) -> Task:
    """A model that outputs its input: class 0 wins everywhere, and the first `correct` targets are 0."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    x_val = torch.tensor([[1.0, 0.0]]).repeat(n_val, 1)
    y_val = (torch.arange(n_val) >= correct).long()
    x_train, y_train = torch.randn(32, 2), torch.randint(0, 2, (32,))
    return Task(model, (x_train, y_train), (x_val, y_val), nn.functional.cross_entropy, metric)


def test_accuracy_se_is_the_binomial_standard_error_over_chunks():
    n, correct = 359, 323  # the digits validation set at 90% accuracy
    trainer = trainer_for(scripted_accuracy_task(n, correct), eval_batch_size=50)  # 8 chunks, the last short
    value, se = trainer.evaluate()
    p = correct / n
    assert value == pytest.approx(p)
    assert se == pytest.approx(math.sqrt(p * (1 - p) / n), rel=1e-5)


def test_mse_se_is_the_sd_of_the_squared_errors_over_root_n():
    torch.manual_seed(0)
    task = regression(TrialSettings(32, 0.05, 0, CPU, options={"dim": 4, "n_train": 64, "n_val": 100}))
    value, se = trainer_for(task, maximize=False, eval_batch_size=30).evaluate()
    x, y = task.val
    with torch.no_grad():
        squared = ((task.model(x) - y) ** 2).flatten()
    assert value == pytest.approx(squared.mean().item(), rel=1e-5)
    assert se == pytest.approx((squared.std(unbiased=False) / math.sqrt(100)).item(), rel=1e-4)


def test_a_scalar_only_metric_records_no_se_and_measuring_leaves_the_values_alone():
    def user_metric(logits, targets):  # a mean and nothing else: no per-example values
        return (logits.argmax(dim=1) == targets).float().mean()

    seen = []
    trainer = trainer_for(scripted_accuracy_task(40, 30, user_metric),
                          reporter=lambda value, step, se: seen.append(se) or False)
    result = trainer.train()
    assert result.value_se_curve is None and seen and all(se is None for se in seen)

    measured = trainer_for(scripted_accuracy_task(40, 30)).train()
    plain = trainer_for(scripted_accuracy_task(40, 30), measure_value_se=False).train()
    assert plain.value_se_curve is None
    assert [s for s, _ in measured.value_se_curve] == [s for s, _ in measured.history] == [2, 4]
    assert measured.history == plain.history


def test_a_sweep_that_measures_records_the_se_of_every_evaluation(tiny_config, sweep, tmp_path):
    config = tiny_config(pruner={"name": "hyperband"}, measure={"value_se": True})
    study = sweep(config, storage=f"sqlite:///{tmp_path / 'measured.db'}")
    assert len(study.trials) == 3
    for trial in study.trials:
        curve = trial.user_attrs["value_se_curve"]
        assert [step for step, _ in curve] == sorted(trial.intermediate_values)
        assert all(se > 0 for _, se in curve) and trial.user_attrs["value_se"] == curve[-1][1]
        rung_attrs = [key for key in trial.system_attrs if key.startswith("sweeps:value_se:")]
        assert rung_attrs  # written with each report the pruner decided on (Hyperband's rungs)
    plain = sweep(tiny_config(study={"n_trials": 1, "name": "plain"}), storage=f"sqlite:///{tmp_path / 'plain.db'}")
    assert not {"value_se_curve", "value_se"} & set(plain.trials[0].user_attrs)
