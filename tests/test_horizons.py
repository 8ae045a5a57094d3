"""Horizons (objectives/training/horizons.py): a horizon branched off a longer run's stable phase
reports what a dedicated run of its length reports, bit for bit on the CPU: value, best step,
curve, updates and examples; and the longer run itself goes on exactly as without branches."""

from __future__ import annotations

import pytest
import torch

from objectives.task import TrialSettings
from objectives.training.budget import Budget, plan_trial
from objectives.training.data import LoaderOptions
from objectives.training.loop import Trainer
from objectives.training.options import EarlyStopping, TrainerOptions
from objectives.training.schedule import Schedule
from tests.tasks_for_tests import digits_golden

CPU = torch.device("cpu")
WARMUP = 6  # updates: absolute, the same for every length


def trained(unit: str, per_trial: float, eval_every: float, batch_size: int, lr: float, *,
            horizons: tuple[float, ...] | None = None, optimizer: str = "sgd", dataset: bool = False,
            noise: bool = False, value_se: bool = False, patience: EarlyStopping | None = None,
            final_fraction: float = 0.0, reporter=None):
    torch.random.default_generator.manual_seed(11)
    task = digits_golden(TrialSettings(batch_size=batch_size, lr=lr, seed=11, device=CPU,
                                       options={"n_train": 480, "dataset": dataset}))
    if optimizer == "sgd":
        opt = torch.optim.SGD(task.model.parameters(), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW(task.model.parameters(), lr=lr)
    budget = Budget(unit, per_trial, eval_every, 64)
    plan = plan_trial(budget, task.n_train, batch_size)
    schedule = Schedule.build(lr, plan.planned_updates, 0.0, "wsd", final_fraction, 0.25, warmup_updates=WARMUP)
    options = TrainerOptions(maximize=True, early_stopping=patience, loader=LoaderOptions(workers=0),
                             measure_noise=noise, measure_value_se=value_se, horizons=horizons)
    trainer = Trainer(task, opt, schedule, plan, budget, options, seed=11, reporter=reporter)
    return trainer.train(), trainer


CASES = {
    "updates_sgd": dict(unit="updates", per_trial=120, eval_every=10, batch_size=16, lr=0.1,
                        lengths=(30, 55, 80)),
    "examples_adamw_final_lr": dict(unit="examples", per_trial=3200, eval_every=400, batch_size=24, lr=3e-3,
                                    optimizer="adamw", final_fraction=0.1, lengths=(800, 1300, 2000)),
    "epochs_dataset_noise_se": dict(unit="epochs", per_trial=4, eval_every=0.5, batch_size=32, lr=0.05,
                                    dataset=True, noise=True, value_se=True, lengths=(1, 2.25)),
    "tokens_early_stopping": dict(unit="tokens", per_trial=64 * 2400, eval_every=64 * 200, batch_size=16,
                                  lr=0.3, patience=EarlyStopping(2, 0.002), lengths=(64 * 600, 64 * 1400)),
}


@pytest.mark.parametrize("case", CASES)
def test_a_horizon_reports_what_its_dedicated_run_reports(case):
    spec = dict(CASES[case])
    lengths = spec.pop("lengths")
    longest = spec["per_trial"]
    result, _ = trained(**spec, horizons=(*lengths, longest))
    plain, _ = trained(**spec)
    assert [h.units for h in result.horizons] == [*lengths, longest]
    own = result.horizons[-1]  # the run's own length: the run itself, unchanged by the branches
    assert (own.value, own.history, own.updates, own.examples) == (
        plain.best_value, plain.history, plain.updates, plain.examples_seen)
    assert (result.best_value, result.history, result.updates) == (plain.best_value, plain.history, plain.updates)
    for horizon, length in zip(result.horizons[:-1], lengths, strict=True):
        dedicated, _ = trained(**{**spec, "per_trial": length})
        assert horizon.history == dedicated.history, (case, length)
        assert (horizon.value, horizon.best_step, horizon.updates, horizon.examples, horizon.stop_reason) == (
            dedicated.best_value, dedicated.best_step, dedicated.updates, dedicated.examples_seen,
            dedicated.stop_reason), (case, length)
        assert 0 < horizon.branch_updates < horizon.updates or horizon.stop_reason == "early_stopping"
    assert result.horizon_seconds > 0


def test_the_pruner_sees_finished_horizons_only_and_stops_the_longer_ones():
    reports = []

    def reporter(value, step, se):
        reports.append((step, value))
        return len(reports) == 2  # prune at the second horizon

    result, _ = trained("updates", 120, 10, 16, 0.1, horizons=(30, 60, 90, 120), reporter=reporter)
    assert [step for step, _ in reports] == [30, 60]  # the horizons' ends, not the grid's 10, 20, ...
    assert result.stop_reason == "pruned"
    assert [h.units for h in result.horizons] == [30, 60]
    assert [v for _, v in reports] == [h.value for h in result.horizons]
    assert result.updates < 90  # the run stopped when its second horizon's branch was judged


def test_a_horizon_whose_warmup_does_not_fit_is_trained_whole_as_a_branch():
    """A horizon shorter than the warmup clamps its warmup (as its dedicated run does): its LR
    differs from the first update, so its branch is the whole dedicated run, still exact."""
    result, _ = trained("updates", 60, 5, 16, 0.1, horizons=(5, 60))
    dedicated, _ = trained("updates", 5, 5, 16, 0.1)
    short = result.horizons[0]
    assert short.branch_updates == 5 and short.updates == 5
    assert (short.value, short.history) == (dedicated.best_value, dedicated.history)


def test_a_run_pruned_at_its_last_update_ends_on_its_plan():
    """The pruner's decision can arrive at the last evaluation (it is applied one evaluation late):
    the run was over anyway, so it is not stored as pruned (it was, and left the study's best)."""
    def prune_at_the_end(value, step, se):
        return step == 120

    result, _ = trained("updates", 120, 10, 16, 0.1, reporter=prune_at_the_end)
    assert result.stop_reason == "budget" and result.updates == 120
    horizons, _ = trained("updates", 120, 10, 16, 0.1, horizons=(30, 120), reporter=prune_at_the_end)
    assert horizons.stop_reason == "budget" and [h.units for h in horizons.horizons] == [30, 120]
