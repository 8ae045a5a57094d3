"""The gradient noise scale measured during training (`measure: {noise_scale: true}`): the
estimate against a known truth, training unchanged by measuring it, and what a trial stores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from objectives.task import Task
from objectives.tasks.regression import mse
from objectives.training.budget import Budget, plan_trial
from objectives.training.loop import Trainer, TrainResult
from objectives.training.noise_scale import estimate_weights, micro_sizes
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule
from sweeps.config.study_file import parse_config
from sweeps.errors import ConfigError
from tests.conftest import TINY, merged

CPU = torch.device("cpu")


@pytest.fixture
def one_thread():
    """Thousands of updates on tensors of 128 x 128: a second thread only adds synchronisation,
    and on a loaded machine waits that make the test many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_regression(dim: int, noise: float, n: int, seed: int) -> tuple[Task, torch.Tensor]:
    """y = x . w* + noise * eps with x ~ N(0, I), and a model without bias starting at w = 0."""
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.randn(dim, 1, generator=gen)
    x = torch.randn(n, dim, generator=gen)
    y = x @ w_star + noise * torch.randn(n, 1, generator=gen)
    model = nn.Linear(dim, 1, bias=False)
    nn.init.zeros_(model.weight)
    return Task(model, (x, y), (x[:64], y[:64]), mse, mse), w_star


def train(task: Task, batch_size: int, updates: int, lr: float, *, measure: bool,
          max_micro_batch: int | None = None, momentum: float = 0.0) -> TrainResult:
    """One trial of `updates` updates, evaluated once at the end (one window, one curve point)."""
    budget = Budget("updates", updates, updates)
    plan = plan_trial(budget, task.n_train, batch_size)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=lr, momentum=momentum)
    schedule = Schedule.build(lr, plan.planned_updates, 0.0, "constant", 1.0)
    options = TrainerOptions(maximize=False, max_micro_batch=max_micro_batch, measure_noise=measure)
    trainer = Trainer(task, optimizer, schedule, plan, budget, options, seed=3)
    return trainer.train()


@pytest.mark.parametrize(("updates", "max_micro_batch"), [(6400, None), (1600, 32)], ids=["not_split", "split_in_4"])
def test_first_point_is_the_analytic_noise_scale_of_linear_regression(updates, max_micro_batch, one_thread):
    """Squared loss l = 0.5 (x . w - y)^2 with x ~ N(0, I_d), y = x . w* + sigma eps, weights
    w = w* + delta. The per-example gradient is g = (x . delta - sigma eps) x, so

        G = E g = E[x x^T] delta = delta,                      |G|^2 = |delta|^2,
        E |g|^2 = E[(x . delta)^2 |x|^2] + sigma^2 E|x|^2 = (d + 2) |delta|^2 + d sigma^2

    (Isserlis: E[x_i x_j x_k x_k] summed over k gives (d + 2) delta_i delta_j), and
    tr(Sigma) = E|g|^2 - |G|^2 = (d + 1) |delta|^2 + d sigma^2. Hence

        B_simple = tr(Sigma) / |G|^2 = d + 1 + d sigma^2 / |delta|^2.

    The task's loss is the mean squared error, twice l: it scales G by 2 and Sigma by 4, which
    leaves B_simple unchanged. Here w starts at 0, so delta = -w*. At lr 1e-7 the weights move by
    about 2 lr per update, under 0.1% over the window: the whole window measures at w = 0.
    A batch of 128 that is not split is measured on every 64th update (100 measurements here, as
    two halves of 64), a split one on every 16th (100 measurements of 4 micro-batches of 32).
    Over 10 data seeds the first point fell within 5% (split) and 8% (not split) of the truth."""
    dim, sigma = 128, 2.0
    task, w_star = linear_regression(dim, sigma, n=16384, seed=0)
    result = train(task, 128, updates, lr=1e-7, measure=True, max_micro_batch=max_micro_batch)
    moved = task.model.weight.detach().norm() / w_star.norm()
    assert moved < 0.01  # the premise: the weights barely moved in the window
    delta_sq = float(w_star.square().sum())
    truth = dim + 1 + dim * sigma**2 / delta_sq
    first_step, first = result.noise_scale_curve[0]
    assert first_step == updates
    assert first == pytest.approx(truth, rel=0.15)


def test_estimates_are_exact_for_gradients_at_their_expected_norms():
    """Micro-batches of unequal sizes (10 examples in 3 parts: 4, 3, 3): when each squared norm is
    its expectation |G|^2 + tr(Sigma) / b, the map returns tr(Sigma) and |G|^2 exactly."""
    batch, gradient_sq, trace = 10, 2.0, 30.0
    sizes = micro_sizes(batch, 3)
    assert sizes == [4, 3, 3]
    # each micro-batch's loss was weighted b / B: its measured norm is (b / B) times its own
    per_part = [(b / batch) ** 2 * (gradient_sq + trace / b) for b in sizes]
    whole = gradient_sq + trace / batch
    squares = torch.tensor(per_part + [whole])
    estimated = estimate_weights(batch, (1, 1, 1, 1)) @ squares
    assert estimated.tolist() == pytest.approx([trace, gradient_sq])


@pytest.mark.parametrize("max_micro_batch", [None, 16], ids=["not_split", "split_in_4"])
def test_measuring_leaves_the_training_as_it_was(max_micro_batch):
    """The measured updates train on the same summed gradient: same weights, same curve."""
    runs = {}
    for measure in (False, True):
        task, _ = linear_regression(8, 0.5, n=512, seed=1)
        torch.manual_seed(0)
        runs[measure] = (train(task, 64, 64, lr=0.05, measure=measure, max_micro_batch=max_micro_batch,
                               momentum=0.9), task.model.weight.detach().clone())
    (plain, plain_weights), (measured, measured_weights) = runs[False], runs[True]
    assert plain.noise_scale_curve is None
    assert len(measured.noise_scale_curve) == 1
    torch.testing.assert_close(measured_weights, plain_weights)
    assert [step for step, _ in measured.history] == [step for step, _ in plain.history]
    assert [value for _, value in measured.history] == pytest.approx([value for _, value in plain.history], rel=1e-5)


def test_measure_section_is_off_by_default_and_checked():
    assert parse_config(TINY).measure.noise_scale is False
    assert parse_config(merged(TINY, {"measure": {"noise_scale": True}})).measure.noise_scale is True
    with pytest.raises(ConfigError, match=r"measure.noise_scale: expected true or false, got int 1"):
        parse_config(merged(TINY, {"measure": {"noise_scale": 1}}))
    with pytest.raises(ConfigError, match=r"measure.noise_scal: unknown key \(did you mean 'noise_scale'\?\)"):
        parse_config(merged(TINY, {"measure": {"noise_scal": True}}))


def test_trials_store_the_curve_and_its_last_value(tiny_config, sweep, tmp_path):
    """The curve as [step, value] pairs at the evaluation steps, `noise_scale` its last value; a
    study that does not measure stores neither name."""
    config = tiny_config(study={"n_trials": 2}, budget={"per_trial": 64, "eval_every": 32},
                         search={"batch_size": [64], "base_lr": 0.01}, objective={"max_micro_batch": 16},
                         measure={"noise_scale": True})
    study = sweep(config, storage=f"sqlite:///{tmp_path / 'noise.db'}")
    for trial in study.trials:
        curve = trial.user_attrs["noise_scale_curve"]
        assert [step for step, _ in curve] == [32, 64]
        assert all(value > 0 for _, value in curve)
        assert trial.user_attrs["noise_scale"] == curve[-1][1]
    plain = sweep(tiny_config(study={"n_trials": 1, "name": "plain"}), storage=f"sqlite:///{tmp_path / 'plain.db'}")
    assert not {"noise_scale_curve", "noise_scale"} & set(plain.trials[0].user_attrs)


def test_the_report_shows_the_curves_names_its_statistic_and_calls_a_wide_range_undetermined(tmp_path, capsys):
    """Linear regression trained to its noise floor: B_simple grows several-fold within each trial
    and the trials end far apart. The report draws B_simple against examples, names the statistic
    it uses and why, says the curves change (with their early and late values), and reports the
    range, wider than 10x, as undetermined rather than as a B_crit."""
    import json

    import yaml

    from sweeps import report, run

    study = merged(TINY, {"study": {"n_trials": 4}, "measure": {"noise_scale": True},
                          "budget": {"per_trial": 200, "eval_every": 20},
                          "objective": {"options": {"dim": 8, "n_train": 2048, "n_val": 256}},
                          "search": {"batch_size": [8, 32]}})
    path = tmp_path / "noise.yaml"
    path.write_text(yaml.safe_dump(study))
    assert run.main([str(path), "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    assert report.main([str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "noise_scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'id="noise-scale"' in (out / "report.html").read_text()
    noise = json.loads((out / "summary.json").read_text())["critical_batch_size"]["from_noise_scale"]
    assert noise["statistic"] in printed and "why this statistic:" in printed

    assert noise["changed"] >= 1, "every curve here grows past 2x from its first evaluation to its last"
    assert (f"B_simple changes during training: by more than 2x in {noise['changed']} of {noise['trials']} "
            f"trials (median {noise['early']:.0f} at the first evaluation, {noise['late']:.0f} at the last)") in printed

    assert noise["high"] > 10 * noise["low"] and noise["determined"] is False
    assert (f"critical batch size from the gradient noise scale: undetermined (B_simple {noise['statistic']} "
            f"spans [{noise['low']:.0f}, {noise['high']:.0f}]") in printed
    assert "B_simple ~" not in printed and "from the gradient noise scale alone" not in printed
