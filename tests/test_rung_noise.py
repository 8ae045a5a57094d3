"""Rung noise: the standard error of an evaluation, measured in the evaluation pass, and the
opt-in pruning guard that keeps a trial whose gap to the cut is within that noise."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from objectives.task import Task, TrialSettings, accuracy
from objectives.tasks.regression import regression
from objectives.training.budget import Budget, plan_trial
from objectives.training.loop import Trainer
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule
from storage.optuna_private import trial_id_of
from sweeps.config.study_file import PrunerSection
from sweeps.errors import ConfigError
from sweeps.run import main
from sweeps.search.noise_guard import HyperbandNoiseGuard, NoiseGuard
from sweeps.search.strategies import build_pruner
from sweeps.trial.record import value_se_key
from tests.conftest import TINY, merged

CPU = torch.device("cpu")


def trainer_for(task: Task, *, measure_value_se: bool = True, reporter=None, eval_batch_size: int = 64,
                maximize: bool = True, budget: Budget | None = None) -> Trainer:
    budget = budget or Budget("updates", 4, 2)
    plan = plan_trial(budget, task.n_train, 8)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.0)
    return Trainer(task, optimizer, Schedule.build(0.0, plan.planned_updates, 0.0, "constant", 0.0), plan, budget,
                   TrainerOptions(maximize=maximize, eval_batch_size=eval_batch_size,
                                  measure_value_se=measure_value_se), seed=1, reporter=reporter)


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


def test_a_dataset_validation_set_gives_the_same_value_and_se_as_tensors():
    tensors = scripted_accuracy_task(100, 71)
    dataset = scripted_accuracy_task(100, 71)
    dataset.val = TensorDataset(*dataset.val)
    assert trainer_for(dataset, eval_batch_size=30).evaluate() == pytest.approx(trainer_for(tensors).evaluate())
    assert trainer_for(dataset).evaluate()[1] == pytest.approx(math.sqrt(0.71 * 0.29 / 100), rel=1e-5)


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


def rung_decision(pruner: optuna.pruners.BasePruner, value: float, se: float | None,
                  others=((0.95, 0.017), (0.90, 0.016), (0.80, 0.021), (0.75, 0.023), (0.70, 0.024))) -> bool:
    """Whether `pruner` prunes a trial reporting `value` (standard error `se`) at step 1, after
    five trials reported theirs there, in a fresh study (maximize), as the bookkeeper reports."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    storage = study._storage
    for other_value, other_se in others:
        trial = study.ask()
        storage.set_trial_system_attr(trial_id_of(trial), value_se_key(1), other_se)
        trial.report(other_value, 1)
        trial.should_prune()
        study.tell(trial, other_value)
    trial = study.ask()
    if se is not None:
        storage.set_trial_system_attr(trial_id_of(trial), value_se_key(1), se)
    trial.report(value, 1)
    return trial.should_prune()


# one bracket: every trial competes in the same rung (the cut is the 2nd best of 6)
BRACKET = {"min_resource": 1, "max_resource": 1, "reduction_factor": 3}


def guarded(margin: float = 2.0) -> HyperbandNoiseGuard:
    return HyperbandNoiseGuard(**BRACKET, noise_margin=margin)


def test_the_guard_keeps_a_trial_hyperband_prunes_within_the_noise_and_prunes_it_outside():
    # 0.88 trails the cut (0.90) by 0.02; digits-size noise: 2 x hypot(0.017, 0.016) = 0.047
    assert rung_decision(optuna.pruners.HyperbandPruner(**BRACKET), 0.88, 0.017) is True
    assert rung_decision(guarded(), 0.88, 0.017) is False
    assert rung_decision(guarded(0.5), 0.88, 0.017) is True  # 0.5 x 0.023 = 0.012 < 0.02
    # the cut's own noise counts: 2 x hypot(0.002, 0.016) = 0.032 covers 0.02, not 0.05
    assert rung_decision(guarded(), 0.85, 0.002) is True
    low_noise = ((0.95, 0.002), (0.90, 0.002), (0.80, 0.002), (0.75, 0.002), (0.70, 0.002))
    assert rung_decision(guarded(), 0.88, 0.002, low_noise) is True
    # a trial Hyperband keeps is kept; one with no standard error is Hyperband's to decide
    assert rung_decision(guarded(), 0.93, 0.017) is False
    assert rung_decision(guarded(), 0.88, None) is True


def test_the_wrapper_guards_successive_halving_the_same_way():
    def halving():
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)

    assert rung_decision(halving(), 0.88, 0.017) is True
    assert rung_decision(NoiseGuard(halving(), 2.0, 1 / 3), 0.88, 0.017) is False
    assert rung_decision(NoiseGuard(halving(), 2.0, 1 / 3), 0.88, 0.002, ((0.95, 0.002), (0.90, 0.002))) is True


def test_guarded_hyperband_compares_within_the_bracket_and_stays_a_hyperband_for_the_sampler():
    """Several brackets: the guard's cut is over the trial's own bracket (as Hyperband's), and the
    pruner is still a HyperbandPruner, so Optuna's samplers keep sampling per bracket."""
    pruner = HyperbandNoiseGuard(min_resource=1, max_resource=9, reduction_factor=3, noise_margin=2.0)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    # Hyperband assigns a trial's bracket from a hash of the study's name and the trial's number: a fixed
    # name splits these 8 trials over the brackets every run (an unnamed study's random name put all 8
    # in one bracket once in CI)
    study = optuna.create_study(study_name="guarded-hyperband", direction="maximize", pruner=pruner)
    for value in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2):
        trial = study.ask()
        trial.report(value, 1)
        trial.should_prune()
        study.tell(trial, value)
    frozen = study.trials[-1]
    bracket = {t.number for t in optuna.pruners._filter_study(study, frozen).get_trials()}
    assert frozen.number in bracket and len(bracket) < len(study.trials)  # the brackets split the trials


def test_build_pruner_wraps_only_when_asked():
    budget = Budget("updates", 40, 10)
    assert isinstance(build_pruner(PrunerSection(), budget, 256), optuna.pruners.HyperbandPruner)
    guard = build_pruner(PrunerSection(noise_margin=2.0), budget, 256)
    assert isinstance(guard, HyperbandNoiseGuard) and guard.noise_margin == 2.0
    assert guard.keep_fraction == pytest.approx(1 / 3)
    median = build_pruner(PrunerSection(name="median", noise_margin=1.0), budget, 256)
    assert isinstance(median, NoiseGuard) and isinstance(median.pruner, optuna.pruners.MedianPruner)
    assert median.keep_fraction == 0.5
    halving = build_pruner(PrunerSection(name="successive_halving", reduction_factor=2, noise_margin=1.0), budget, 256)
    assert isinstance(halving.pruner, optuna.pruners.SuccessiveHalvingPruner) and halving.keep_fraction == 0.5


@pytest.mark.parametrize(("arguments", "message"), [
    ((object(), 2.0, 0.5), "NoiseGuard pruner must be an optuna pruner, got object"),
    ((optuna.pruners.NopPruner(), 0.0, 0.5), r"NoiseGuard noise_margin must be a finite number > 0 \(got 0.0\)"),
    ((optuna.pruners.NopPruner(), math.inf, 0.5), r"noise_margin must be a finite number > 0 \(got inf\)"),
    ((optuna.pruners.NopPruner(), True, 0.5), r"noise_margin must be a finite number > 0 \(got True\)"),
    ((optuna.pruners.NopPruner(), 2.0, 0.0), r"NoiseGuard keep_fraction must be a number in \(0, 1\] \(got 0.0\)"),
    ((optuna.pruners.NopPruner(), 2.0, 1.5), r"keep_fraction must be a number in \(0, 1\] \(got 1.5\)"),
    ((optuna.pruners.HyperbandPruner(), 2.0, 0.5), "must not be a HyperbandPruner .* use HyperbandNoiseGuard"),
])
def test_guard_arguments_are_checked_and_named(arguments, message):
    with pytest.raises((TypeError, ValueError), match=message):
        NoiseGuard(*arguments)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"noise_margin": -1}, r"HyperbandNoiseGuard noise_margin must be a finite number > 0 \(got -1\)"),
    ({"reduction_factor": 1, "noise_margin": 2.0}, r"reduction_factor must be a whole number >= 2 \(got 1\)"),
    ({"min_resource": 0, "noise_margin": 2.0}, r"min_resource must be a whole number >= 1 or 'auto' \(got 0\)"),
    ({"max_resource": 2.5, "noise_margin": 2.0}, r"max_resource must be a whole number >= 1 or 'auto' \(got 2.5\)"),
])
def test_hyperband_guard_arguments_are_checked_and_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        HyperbandNoiseGuard(**arguments)


def test_noise_margin_is_checked_in_the_study_file(tmp_path):
    from sweeps.config.study_file import parse_config

    assert parse_config(TINY).pruner.noise_margin is None and parse_config(TINY).measure.value_se is False
    for margin, message in ((0, "must be a finite number > 0, got 0"), (-1.5, "got -1.5"),
                            ("wide", "expected a number, got")):
        with pytest.raises(ConfigError, match=rf"pruner.noise_margin: .*{message}"):
            parse_config(merged(TINY, {"pruner": {"name": "hyperband", "noise_margin": margin}}))
    with pytest.raises(ConfigError, match=r"pruner.noise_margin: needs a pruner \(pruner.name is none\)"):
        parse_config(merged(TINY, {"pruner": {"noise_margin": 2.0}}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruner: {name: hyperband, noise_margin: -2}\n" + "".join(
        f"{key}: {value!r}\n".replace("'", '"') for key, value in TINY.items() if key != "pruner"))
    assert main([str(bad)]) == 2


def test_a_sweep_with_the_guard_records_the_se_of_every_evaluation(tiny_config, sweep, tmp_path):
    config = tiny_config(pruner={"name": "hyperband", "noise_margin": 2.0})
    study = sweep(config, storage=f"sqlite:///{tmp_path / 'guard.db'}")
    assert len(study.trials) == 3
    for trial in study.trials:
        curve = trial.user_attrs["value_se_curve"]
        assert [step for step, _ in curve] == sorted(trial.intermediate_values)
        assert all(se > 0 for _, se in curve) and trial.user_attrs["value_se"] == curve[-1][1]
        rung_attrs = [key for key in trial.system_attrs if key.startswith("sweeps:value_se:")]
        assert rung_attrs  # written with each report the pruner decided on (Hyperband's rungs)
    plain = sweep(tiny_config(study={"n_trials": 1, "name": "plain"}), storage=f"sqlite:///{tmp_path / 'plain.db'}")
    assert not {"value_se_curve", "value_se"} & set(plain.trials[0].user_attrs)
    measured = sweep(tiny_config(study={"n_trials": 1, "name": "measured"}, measure={"value_se": True}),
                     storage=f"sqlite:///{tmp_path / 'measured.db'}")
    assert len(measured.trials[0].user_attrs["value_se_curve"]) == len(measured.trials[0].intermediate_values)
