"""Warmup-stable-decay and rung evaluations on a short cooldown branch (opt-in, issue 17)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from objectives.task import Task, negative_mse
from objectives.training.budget import Budget, plan_trial
from objectives.training.loop import Trainer
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule, cooled
from sweeps.budget.spending import Spending
from sweeps.config.fingerprint import fingerprint_of
from sweeps.config.study_file import TotalBudgetSection, parse_config
from sweeps.errors import ConfigError
from sweeps.publish.notes import trial_note
from sweeps.trial.record import consumed, cooldown_consumed
from tests.conftest import TINY, merged
from tests.tasks_for_tests import RecordingSGD, mse
from tests.test_sweep import TASKS, make_config, sweep


def test_wsd_holds_the_peak_then_decays_1_sqrt_to_zero_at_the_last_update():
    schedule = Schedule.build(1.0, 100, 0.1, "wsd", 0.0, decay_fraction=0.2)
    assert (schedule.warmup_updates, schedule.decay_updates, schedule.decay_start) == (10, 20, 80)
    assert schedule.lr_at(0) == pytest.approx(1 / 11)  # the warmup is the other shapes'
    assert schedule.lr_at(10) == schedule.lr_at(79) == 1.0  # stable at the peak up to the decay
    assert schedule.lr_at(80) == pytest.approx(1 - math.sqrt(1 / 20))
    assert schedule.lr_at(84) == pytest.approx(1 - math.sqrt(5 / 20))  # a quarter in: half the peak
    assert schedule.lr_at(84) == pytest.approx(0.5)
    assert schedule.lr_at(99) == 0.0
    decay = [schedule.lr_at(u) for u in range(79, 100)]
    assert decay == sorted(decay, reverse=True)


def test_wsd_final_fraction_and_small_plans():
    schedule = Schedule.build(2.0, 10, 0.0, "wsd", 0.1, decay_fraction=0.2)
    assert schedule.decay_start == 8 and schedule.lr_at(9) == pytest.approx(0.2)
    tiny = Schedule.build(1.0, 3, 0.0, "wsd", 0.0, decay_fraction=0.01)
    assert tiny.decay_updates == 1 and tiny.lr_at(1) == 1.0 and tiny.lr_at(2) == 0.0  # at least one
    crowded = Schedule.build(1.0, 10, 0.9, "wsd", 0.0, decay_fraction=0.5)
    assert crowded.warmup_updates == 9 and crowded.decay_start == 9 and crowded.lr_at(9) == 0.0


def test_other_shapes_decay_over_the_whole_plan():
    assert Schedule.build(1.0, 50, 0.0, "cosine", 0.0).decay_start == 50
    assert Schedule.build(1.0, 50, 0.0, "cosine", 0.0, decay_fraction=0.2).decay_updates == 0


def test_cooled_is_1_sqrt():
    assert cooled(0.4, 0.25) == pytest.approx(0.2)
    assert cooled(0.4, 1.0) == 0.0
    assert cooled(0.4, 1.0, 0.5) == pytest.approx(0.2)


# --- the study file --------------------------------------------------------------------------------


SECONDS = {"unit": "seconds", "per_trial": 5, "eval_every": 1}


def parsed(schedule: dict, **more):
    return parse_config(merged(TINY, {"schedule": schedule, **more}))


def test_wsd_is_the_default_with_cooldowns_off_and_cosine_keeps_no_wsd_keys():
    plain = parsed({})
    assert (plain.schedule.name, plain.schedule.decay_fraction, plain.schedule.cooldown_evaluations,
            plain.schedule.cooldown_fraction) == ("wsd", 0.2, False, None)
    cosine = parsed({"name": "cosine"})
    assert (cosine.schedule.decay_fraction, cosine.schedule.cooldown_fraction) == (None, None)
    wsd = parsed({"name": "wsd", "cooldown_evaluations": True})
    assert (wsd.schedule.decay_fraction, wsd.schedule.cooldown_fraction) == (0.2, 0.1)


def test_the_off_keys_stay_out_of_the_fingerprint():
    """A study fingerprinted before these keys existed resumes with a file that leaves them out."""
    plain = fingerprint_of(parsed({"name": "cosine"}))
    assert not [key for key in plain if key.split(".")[-1] in ("decay_fraction", "cooldown_evaluations",
                                                                 "cooldown_fraction")]
    on = fingerprint_of(parsed({"name": "wsd", "cooldown_evaluations": True}))
    assert on["schedule.decay_fraction"] == 0.2 and on["schedule.cooldown_evaluations"] is True


@pytest.mark.parametrize(
    ("schedule", "more", "path", "words"),
    [
        ({"name": "wsdd"}, {}, "schedule.name", "did you mean 'wsd'"),
        ({"name": "cosine", "decay_fraction": 0.2}, {}, "schedule.decay_fraction",
         "only to schedule name wsd (name is cosine)"),
        ({"name": "wsd", "decay_fraction": 0}, {}, "schedule.decay_fraction", "(0, 1]"),
        ({"name": "wsd", "decay_fraction": 1.5}, {}, "schedule.decay_fraction", "(0, 1]"),
        ({"name": "wsd", "decay_fraction": "late"}, {}, "schedule.decay_fraction", "expected"),
        ({"name": "cosine", "cooldown_evaluations": True}, {}, "schedule.cooldown_evaluations",
         "needs schedule name wsd"),
        ({"name": "wsd", "cooldown_evaluations": "yes please"}, {}, "schedule.cooldown_evaluations", "expected"),
        ({"name": "wsd", "cooldown_fraction": 0.1}, {}, "schedule.cooldown_fraction", "cooldown_evaluations: true"),
        ({"name": "wsd", "cooldown_evaluations": True, "cooldown_fraction": 0}, {}, "schedule.cooldown_fraction",
         "(0, 1]"),
        ({"name": "wsd", "cooldown_evaluations": True}, {"budget": SECONDS}, "schedule.cooldown_evaluations",
         "not seconds"),
        ({"name": "wsd", "cooldown_evaluation": True}, {}, "schedule.cooldown_evaluation",
         "did you mean 'cooldown_evaluations'"),
    ],
)
def test_bad_schedule_keys_name_their_path(schedule, more, path, words):
    with pytest.raises(ConfigError) as caught:
        parsed(schedule, **more)
    assert caught.value.path == path, str(caught.value)
    assert words in str(caught.value)


# --- the cooldown branch ---------------------------------------------------------------------------
class KeepsLastWeights(Trainer):
    """The trainer, remembering the main run's weights before `finish` restores the best ones."""

    def finish(self) -> None:
        self.last_weights = {k: v.clone() for k, v in self.model.state_dict().items()}
        super().finish()


def noisy_task(seed: int) -> Task:
    """Regression through dropout, with an augmentation drawing from its generator: the branch must
    leave both random streams where the main run expects them."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(192, 6, generator=gen)  # 12 batches of 16
    y = x @ torch.randn(6, 1, generator=gen)
    torch.random.default_generator.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    return Task(model, (x, y), (x[:50], y[:50]), mse, negative_mse,
                augment=lambda batch, g: (batch[0] + 0.01 * torch.randn(batch[0].shape, generator=g), batch[1]))


def train_wsd(cooldown_fraction: float | None, optimizer: str = "sgd", updates: int = 60):
    task = noisy_task(3)
    budget = Budget("updates", updates, 10)
    plan = plan_trial(budget, task.n_train, 16, None)
    schedule = Schedule.build(0.05, plan.planned_updates, 0.1, "wsd", 0.0, decay_fraction=0.3)
    if optimizer == "sgd":
        opt = RecordingSGD(task.model.parameters(), lr=0.05, momentum=0.9)
    else:
        opt = torch.optim.AdamW(task.model.parameters(), lr=0.05)
    reported: list[tuple[int, float]] = []
    trainer = KeepsLastWeights(task, opt, schedule, plan, budget,
                               TrainerOptions(maximize=True, cooldown_fraction=cooldown_fraction), seed=7,
                               reporter=lambda value, step, se: reported.append((step, value)) and False)
    return trainer, trainer.train(), reported, opt


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_branch_leaves_the_main_run_bit_identical_and_changes_the_rung_values(optimizer):
    plain, plain_result, plain_reported, plain_opt = train_wsd(None, optimizer)
    branched, result, reported, opt = train_wsd(0.5, optimizer)
    for name, weight in plain.last_weights.items():
        assert torch.equal(weight, branched.last_weights[name]), f"{name} differs after the branches"
    assert result.updates == plain_result.updates == 60
    assert result.examples_seen == plain_result.examples_seen == 60 * 16
    # the grid is 10, 20, ..., 60 and the decay starts at update 42: branches at 10 to 40, after
    # 5, 10, 15, 20 cooldown updates (half the updates done)
    assert result.cooldown_updates == 5 + 10 + 15 + 20 and result.cooldown_examples == 50 * 16
    assert result.cooldown_seconds >= 0 and plain_result.cooldown_updates is None
    steps = [step for step, _ in reported]
    assert steps == [step for step, _ in plain_reported] == [10, 20, 30, 40, 50, 60]
    values, plain_values = dict(reported), dict(plain_reported)
    assert all(values[s] != plain_values[s] for s in (10, 20, 30, 40)), "a branch changes its rung's value"
    assert values[50] == plain_values[50] and values[60] == plain_values[60], "in the decay: no branch"
    if optimizer == "sgd":
        # the main run's LRs are the schedule's; each branch goes 1-sqrt from the peak to zero
        lrs, main, branches = list(opt.lrs), [], []
        for length in (5, 10, 15, 20):
            main += lrs[:10]
            branches.append(lrs[10 : 10 + length])
            lrs = lrs[10 + length :]
        assert main + lrs == plain_opt.lrs
        for length, branch in zip((5, 10, 15, 20), branches, strict=True):
            assert branch == pytest.approx([cooled(0.05, k / (length + 1)) for k in range(1, length + 1)])


def test_with_the_branch_off_the_batches_are_the_plain_generator():
    trainer = KeepsLastWeights(noisy_task(0), torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1),
                               Schedule.build(0.1, 10, 0.0, "wsd", 0.0, 0.2),
                               plan_trial(Budget("updates", 10, 5), 192, 16, None), Budget("updates", 10, 5),
                               TrainerOptions(maximize=True), seed=0)
    assert not any(hook.seeks for hook in trainer.hooks) and trainer.result.cooldown_updates is None


def test_a_sweep_with_cooldown_evaluations_reports_the_branches_and_records_their_cost(tmp_path):
    """lr_probe's weight (its metric) moves by exactly -lr per update: a rung's value is minus the
    main run's LRs and its branch's, and the main run goes on as if no branch had run."""
    config = make_config(tmp_path, study={"n_trials": 1, "metric": "w", "direction": "maximize"},
                         objective={"task": f"{TASKS}:lr_probe", "momentum": 0.0},
                         schedule={"name": "wsd", "decay_fraction": 0.25, "cooldown_evaluations": True,
                                   "cooldown_fraction": 0.2},
                         budget={"unit": "updates", "per_trial": 20, "eval_every": 5},
                         search={"batch_size": 8, "base_lr": 0.05})
    trial = sweep(config, tmp_path / "s.db").trials[0]
    curve, attrs, peak = trial.intermediate_values, trial.user_attrs, 0.05
    # rung 5: a branch of round(0.2 x 5) = 1 update; rung 10: 2 updates; 15: the decay (15 to 19) begins
    assert curve[5] == pytest.approx(-5 * peak - cooled(peak, 1 / 2))
    assert curve[10] == pytest.approx(-10 * peak - cooled(peak, 1 / 3) - cooled(peak, 2 / 3))
    assert curve[15] == pytest.approx(-15 * peak), "the main run took no branch update"
    decay = sum(cooled(peak, k / 5) for k in range(1, 6))
    assert curve[20] == pytest.approx(-15 * peak - decay)
    assert (attrs["updates"], attrs["examples_seen"]) == (20, 160)
    assert (attrs["cooldown_updates"], attrs["cooldown_examples"]) == (3, 24) and attrs["cooldown_seconds"] >= 0
    assert consumed(trial, "updates") == 23 and consumed(trial, "examples") == 184
    note = trial_note(trial, config)
    assert "wsd (last 0.25 of the plan decays)" in note and "cooldown branch of 0.2 x" in note
    assert "| cooldown-branch updates | 3 |" in note


@pytest.mark.parametrize(("unit", "expected"), [("updates", 23.0), ("examples", 184.0), ("epochs", 23 / 5),
                                                ("tokens", 184.0 * 4), ("seconds", 2.5), ("gpu_hours", 2.5 / 3600)])
def test_the_branches_count_against_the_total_budget(unit, expected):
    attrs = {"updates": 20, "examples_seen": 160, "epochs_completed": 4.0, "tokens_seen": 640, "train_seconds": 2.0,
             "iterations_per_epoch": 5, "tokens_per_example": 4,
             "cooldown_updates": 3, "cooldown_examples": 24, "cooldown_seconds": 0.5}
    budget_unit = "updates" if unit == "gpu_hours" else unit
    spending = Spending(TotalBudgetSection(1e6, unit), Budget(budget_unit, 20, 5), 40, False, ((8, None),))
    assert spending.actual(attrs) == pytest.approx(expected)
    assert cooldown_consumed({"updates": 20}, unit) == 0.0  # no branches, nothing added
