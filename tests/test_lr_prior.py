"""The measured LR prior (`search.lr_range_test`, sweeps/search/prior.py): its refusals, the fit
and placement, a measurement that is repeatable and leaves the global RNG as it found it, and a
study whose every trial searches the prior's space: alone, under --workers on each store, across a
resume, fused, with horizons, and in `sweeps confirm`."""

from __future__ import annotations

import dataclasses
import json
import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from sweeps import exits
from sweeps.config.fingerprint import fingerprint_of
from sweeps.config.study_file import IntRange, parse_config
from sweeps.config.target import target_of
from sweeps.errors import ConfigError
from sweeps.loop.runner import run_sweep
from sweeps.run import main
from sweeps.search.prior import MeasuredPrior, batch_cap, capped, fit, placed, searched, sizes_to_test
from sweeps.trial.lr_range_test import measure
from sweeps.trial.record import PRIOR_ATTR, TrialRecord
from tests.conftest import TINY, merged
from tests.test_ledger import write
from tests.test_workers import PG_URL, load, needs_pg, start, unique, with_peers

# A range 1e5 wide, and a prior 10 wide inside it: the narrowing is visible in every trial.
PRIOR = {"study": {"n_trials": 6},
         "search": {"batch_size": [8, 16, 32], "base_lr": {"low": 1e-4, "high": 10.0, "log": True},
                    "coupling": ["none", "linear"],
                    "lr_range_test": {"budget_fraction": 0.2, "span": 10}}}


def error_of(overrides: dict) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(merged(merged(TINY, PRIOR), overrides))
    return caught.value


@pytest.mark.parametrize(("overrides", "path", "words"), [
    ({"search": {"base_lr": 0.01}}, "search.lr_range_test", "centres a log-scale range"),
    ({"search": {"base_lr": {"low": 0.01, "high": 0.1, "log": False}}}, "search.lr_range_test",
     "centres a log-scale range"),
    ({"budget": {"unit": "seconds", "per_trial": 2.0, "eval_every": 0.5}}, "search.lr_range_test",
     "needs a counting budget"),
    ({"search": {"lr_range_test": {"budget_fraction": 0.5}}}, "search.lr_range_test.budget_fraction", "(0, 0.2]"),
    ({"search": {"lr_range_test": {"below": 0.5}}}, "search.lr_range_test.below", ">= 1"),
    ({"search": {"lr_range_test": {"span": 1}}}, "search.lr_range_test.span", "> 1"),
    ({"search": {"lr_range_test": {"spam": 1}}}, "search.lr_range_test.spam", "unknown key"),
    ({"search": {"lr_range_test": {"batch_sizes": [8]}}}, "search.lr_range_test.batch_sizes", "at least two"),
    ({"search": {"lr_range_test": {"batch_sizes": [8, 12]}}}, "search.lr_range_test.batch_sizes",
     "12 is not a searched batch size"),
    ({"search": {"lr_range_test": {"cap_batch": "yes"}}}, "search.lr_range_test.cap_batch", "expected true or false"),
])
def test_what_the_prior_cannot_centre_is_refused_naming_the_key(overrides, path, words):
    err = error_of(overrides)
    assert err.path == path and words in str(err), str(err)


def test_a_share_too_small_for_the_test_is_exit_2_with_one_line_and_no_trial(tmp_path, capsys):
    """0.05 of 6 trials of 40 updates at batch 16 buys 3 updates per batch size: refused."""
    path = write(tmp_path, "small", merged(PRIOR, {"search": {"lr_range_test": {"budget_fraction": 0.05}}}))
    assert main([path, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "search.lr_range_test.budget_fraction" in err and "study.n_trials" in err
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{tmp_path}/small.db")
    assert not study.trials and PRIOR_ATTR not in study.user_attrs


def test_the_prior_enters_the_fingerprint_only_when_set():
    assert not [k for k in fingerprint_of(parse_config(TINY)) if k.startswith("search.lr_range_test")]
    with_prior = fingerprint_of(parse_config(merged(TINY, PRIOR)))
    assert with_prior["search.lr_range_test.span"] == 10
    # a prior's study from before `cap_batch` keeps its fingerprint; the cap, when on, changes it
    assert "search.lr_range_test.cap_batch" not in with_prior
    capped = fingerprint_of(parse_config(merged(TINY, CAPPED)))
    assert capped["search.lr_range_test.cap_batch"] is True


@pytest.mark.parametrize(("lrs", "rule", "exponent"), [
    ((0.1, 0.1, 0.1), "none", 0.0),
    ((0.1, 0.2, 0.8), "linear", 1.0),
    ((0.1, 0.1 * 2 ** 0.5, 0.1 * 8 ** 0.5), "sqrt", 0.5),
    ((0.1, 0.13, 0.25), "sqrt", None),  # between: the nearest rule
])
def test_the_fitted_exponent_snaps_to_the_nearest_rule_and_the_centre_is_moved_to_the_reference(lrs, rule, exponent):
    sizes = (16, 32, 128)
    fitted, got, centre = fit(sizes, list(lrs), 16)
    assert got == rule
    if exponent is not None:
        assert fitted == pytest.approx(exponent)
        assert centre == pytest.approx(0.1)  # every test moved to batch 16 by the rule: 0.1


def test_the_range_is_span_wide_around_the_centre_and_moved_inside_the_file_range():
    assert placed(0.1, 100, 1e-4, 10) == pytest.approx((0.01, 1.0))
    assert placed(1e-3, 100, 1e-4, 10) == pytest.approx((1e-4, 1e-2))  # moved up, not cut
    assert placed(5.0, 100, 1e-4, 10) == pytest.approx((0.1, 10))  # moved down
    assert placed(0.1, 1000, 0.01, 1) == (0.01, 1)  # the file's range is narrower: all of it


def test_the_tested_batch_sizes_are_the_smallest_the_middle_and_the_largest_or_those_named():
    wide = merged(merged(TINY, PRIOR), {"search": {"batch_size": {"low": 16, "high": 512, "log": True,
                                                                  "power_of_two": True}}})
    assert sizes_to_test(parse_config(wide).search) == (16, 128, 512)
    assert sizes_to_test(parse_config(merged(TINY, PRIOR)).search) == (8, 16, 32)
    named = merged(wide, {"search": {"lr_range_test": {"batch_sizes": [64, 16]}}})
    assert sizes_to_test(parse_config(named).search) == (16, 64)


def test_named_batch_sizes_cost_their_own_examples_against_the_same_budget(tmp_path):
    """The budget is n_trials full trials at the middle searched batch size (16), whatever is
    tested: 0.2 x 6 x 640 examples / (8 + 32) examples per round = 19 updates."""
    named = merged(merged(TINY, PRIOR), {"search": {"lr_range_test": {"batch_sizes": [8, 32]}}})
    prior, budget = measure(parse_config(named, tmp_path), 6)
    assert budget == 6 * 40 * 16 and prior.batch_sizes == (8, 32) and prior.updates == 19
    assert prior.examples == 19 * 40


def test_the_measurement_repeats_exactly_and_puts_the_global_rng_back(tmp_path):
    config = parse_config(merged(TINY, PRIOR), tmp_path)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, budget = measure(config, 6)
    assert torch.equal(torch.random.get_rng_state(), before)
    second, _ = measure(config, 6)
    assert first == second
    # 0.2 x 6 trials x (40 updates x 16 examples) / (8 + 16 + 32) examples per round: 13 updates
    assert budget == 6 * 40 * 16 and first.updates == 13 and first.examples == 13 * 56
    assert first.batch_sizes == (8, 16, 32) and first.coupling in ("none", "sqrt", "linear")
    assert first.high / first.low == pytest.approx(10)
    assert 1e-4 <= first.low < first.high <= 10
    assert MeasuredPrior.from_attrs(first.to_attrs()) == first


def searched_as_measured(study: optuna.Study, reference: int = 8) -> MeasuredPrior:
    """Every trial that started sampled in the stored prior's range and trained with its rule
    (`reference`: the study's reference batch size, its smallest)."""
    prior = MeasuredPrior.from_attrs(study.user_attrs[PRIOR_ATTR])
    started = [t for t in study.trials if "base_lr" in t.params]
    assert started
    for trial in started:
        assert prior.low <= trial.params["base_lr"] <= prior.high
        assert "coupling" not in trial.params  # the rule is the prior's, not searched
        record = TrialRecord.of(trial)
        if record.lr is not None:
            assert record.coupling == prior.coupling
            scale = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[prior.coupling]
            assert record.lr == pytest.approx(trial.params["base_lr"] * (record.batch_size / reference) ** scale)
    return prior


def test_a_sweep_searches_the_prior_measured_once_and_read_back_on_resume(tmp_path, capsys):
    data = merged(merged(TINY, PRIOR), {"study": {"name": "prior"}})
    config = parse_config(data, tmp_path)
    study = run_sweep(config, target_of(config), show_progress=False)
    assert capsys.readouterr().err.count("LR range test") == 1
    prior = searched_as_measured(study)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6
    again = parse_config(data, tmp_path)  # a resume in a new process: the stored prior, not measured
    study = run_sweep(again, target_of(again, n_trials=8), show_progress=False)
    assert "LR range test" not in capsys.readouterr().err
    assert again.search.measured == prior and searched_as_measured(study) == prior
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 8


def test_a_study_started_without_the_prior_refuses_it_on_resume(tmp_path, capsys):
    path = write(tmp_path, "later", {"study": {"n_trials": 2}})
    assert main([path, "--quiet"]) == 0
    path = write(tmp_path, "later", PRIOR)
    assert main([path, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "search.lr_range_test" in err


@pytest.mark.parametrize(("store", "fuse"), [("sqlite", 2), pytest.param("postgresql", "off", marks=needs_pg)])
def test_every_worker_searches_the_one_measured_prior(tmp_path, store, fuse):
    """The parent measures before its workers start; each reads the stored prior. Fused groups
    (`objective.fuse: 2`) sample their members in it too. Each store once and each mode once (the
    prior is read in `open_study`, before either store or mode matters; 9 s a pair). Under a total
    budget the ledger books the tests once, beside each trial."""
    from storage.ledger import RANGE_TEST_ID
    from tests.test_ledger import booked

    name = unique("prw")
    url = PG_URL if store == "postgresql" else f"sqlite:///{tmp_path}/prw.db"
    path = write(tmp_path, name, merged(PRIOR, {"objective": {"fuse": fuse, **with_peers(tmp_path, 2)}}),
                 heartbeat_interval=1, grace_period=6, total_budget={"amount": 1000, "unit": "updates"})
    done = start(path, "--workers", "2", storage=url)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert err.count("LR range test") == 1, err
    study = load(name, url)
    searched_as_measured(study)
    finished = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(finished) == 6 and len({t.user_attrs["worker"] for t in finished}) == 2
    assert all(bool(TrialRecord.of(t).fused_group) == (fuse != "off") for t in finished)
    assert booked(name, url) == {RANGE_TEST_ID: (39.0, 39.0), **{t.number: (40.0, 40.0) for t in finished}}


def test_the_prior_with_horizons_and_confirm(tmp_path, capsys):
    """With horizons every trial answers each length in the prior's space; `sweeps confirm`'s
    companion trains its runs with the main study's rule, measuring nothing again."""
    from sweeps import confirm, exits
    horizons = {"budget": {"unit": "updates", "per_trial": 40, "eval_every": 5, "horizons": [10, "0.5x"]}}
    path = write(tmp_path, "prh", merged(PRIOR, horizons))
    assert main([path, "--quiet"]) == 0
    assert capsys.readouterr().err.count("LR range test") == 1
    url = f"sqlite:///{tmp_path}/prh.db"
    prior = searched_as_measured(optuna.load_study(study_name="prh", storage=url))
    assert confirm.main([path, "--top", "2", "--seeds", "2", "--quiet"]) == exits.OK
    assert "LR range test" not in capsys.readouterr().err
    runs = optuna.load_study(study_name="prh-confirm", storage=url).get_trials(states=(TrialState.COMPLETE,))
    assert len(runs) == 4
    assert all(TrialRecord.of(t).coupling == prior.coupling for t in runs)
    from sweeps import report
    out = tmp_path / "report"
    assert report.main([path, "--out", str(out)]) == exits.OK
    assert f"searched with a measured prior: {prior.line()}" in capsys.readouterr().out
    assert MeasuredPrior.from_attrs(json.loads((out / "summary.json").read_text())["lr_prior"]) == prior


def test_a_dataset_task_under_a_tokens_budget_is_measured_from_its_shuffled_order(tmp_path):
    data = {
        "study": {"name": "lmp", "metric": "accuracy", "direction": "maximize", "n_trials": 12, "seed": 0},
        "sampler": {"name": "random"}, "pruner": {"name": "none"},
        "objective": {"task": "tests.test_datasets:lm_factory", "optimizer": "adam", "loader": {"workers": 0}},
        "budget": {"unit": "tokens", "per_trial": 6 * 160, "eval_every": 6 * 64},
        "search": {"batch_size": [4, 8, 16], "base_lr": {"low": 1e-4, "high": 1.0, "log": True},
                   "lr_range_test": {"budget_fraction": 0.2, "span": 10}},
    }
    config = parse_config(data, tmp_path)
    study = run_sweep(config, target_of(config), show_progress=False)
    prior = searched_as_measured(study, reference=4)
    assert prior.updates >= 10 and all(math.isfinite(lr) for lr in prior.lr_min)


def test_the_ledger_books_the_prior_once_then_the_trials(tmp_path):
    """`study.total_budget` of 100 updates: the range test's 3 x 13 updates are booked first, as
    the ledger's own row, so one trial of 40 fits and the next does not; a resume books nothing
    more (docs/guide/study_file.md)."""
    from storage.ledger import RANGE_TEST_ID
    from tests.test_ledger import booked, ledger_of

    data = merged(merged(TINY, PRIOR), {"study": {"name": "prl", "total_budget": {"amount": 100, "unit": "updates"}}})
    config = parse_config(data, tmp_path)
    target = target_of(config)
    study = run_sweep(config, target, show_progress=False)
    prior = searched_as_measured(study)
    assert prior.updates == 13 and prior.seconds > 0
    trained = [t for t in study.trials if TrialRecord.of(t).updates is not None]
    assert len(trained) == 1
    assert booked("prl", target.storage_url) == {RANGE_TEST_ID: (39.0, 39.0), 0: (40.0, 40.0)}
    state = ledger_of("prl", target.storage_url)
    assert state.stopped and state.spent == 79.0
    run_sweep(parse_config(data, tmp_path), target, show_progress=False)  # resumed: the stored prior, booked once
    assert booked("prl", target.storage_url)[RANGE_TEST_ID] == (39.0, 39.0)


@pytest.mark.parametrize(("budget", "unit"), [
    ({"unit": "examples", "per_trial": 640, "eval_every": 160}, "examples"),
    ({"unit": "epochs", "per_trial": 3, "eval_every": 1}, "epochs"),
    ({}, "seconds"),
])
def test_the_prior_is_booked_in_the_totals_unit(tmp_path, budget, unit):
    """Its examples, its epochs of the 256 training examples, or its wall time under a time total."""
    from storage.ledger import RANGE_TEST_ID
    from tests.test_ledger import booked

    data = merged(merged(TINY, PRIOR), {"study": {"name": "pru", "total_budget": {"amount": 1e6, "unit": unit}},
                                        "budget": budget})
    config = parse_config(data, tmp_path)
    target = target_of(config)
    study = run_sweep(config, target, show_progress=False)
    prior = searched_as_measured(study)
    cost = {"examples": prior.examples, "epochs": prior.examples / 256, "seconds": prior.seconds}[unit]
    assert prior.n_train == 256 and cost > 0
    assert booked("pru", target.storage_url)[RANGE_TEST_ID] == (pytest.approx(cost), pytest.approx(cost))


def test_a_total_that_cannot_hold_the_prior_is_exit_2_before_any_test_trains(tmp_path, capsys):
    """39 updates of tests against a total of 30: refused naming the key, nothing measured or booked."""
    from tests.test_ledger import booked

    path = write(tmp_path, "prx", PRIOR, total_budget={"amount": 30, "unit": "updates"})
    assert main([path, "--quiet"]) == exits.USAGE
    err = capsys.readouterr().err
    assert "search.lr_range_test" in err and "39 updates, more than the 30 left of study.total_budget" in err, err
    assert "LR range test (" not in err
    url = f"sqlite:///{tmp_path}/prx.db"
    study = optuna.load_study(study_name="prx", storage=url)
    assert PRIOR_ATTR not in study.user_attrs and not study.trials
    assert booked("prx", url) == {}


# --- `cap_batch`: the gradient noise scale measured in the tests caps the batch sizes searched ---

def test_the_cap_is_the_first_searched_batch_size_at_or_above_the_tests_noise_scale():
    sizes = [16, 32, 64, 128, 256, 512]
    assert batch_cap(sizes, [20.0, 80.0]) == 64  # the geometric mean, 40, rounded up to a searched size
    assert batch_cap(sizes, [5.0, None]) == 16  # below the smallest: the smallest alone
    assert batch_cap(sizes, [64.0]) == 64  # at a searched size: that one
    assert batch_cap(sizes, [300.0]) is None  # the largest is the cap: nothing to drop
    assert batch_cap(sizes, [None, float("nan"), -3.0]) is None  # nothing measured: no cap


def test_a_cap_narrows_every_form_of_the_batch_size_search():
    wide = IntRange(16, 512, log=True, power_of_two=True)
    assert capped(wide, 64).values() == [16, 32, 64]
    assert capped(wide, 8).values() == [16]  # never emptied
    assert capped([8, 16, 32], 16) == [8, 16] and capped([8, 16, 32], 4) == [8] and capped(32, 8) == 32
    config = parse_config(merged(TINY, PRIOR))
    prior = MeasuredPrior((8, 32), (0.1, 0.2), 10, 400, 0.5, "sqrt", 0.01, 0.1, noise_scales=(3.0, 9.0),
                          batch_high=16)
    config.search.measured = prior
    assert searched(config.search).batch_size == [8, 16]
    config.search.measured = dataclasses.replace(prior, batch_high=None)
    assert searched(config.search).batch_size == [8, 16, 32]


def test_a_prior_stored_before_the_cap_reads_back_uncapped():
    attrs = MeasuredPrior((8, 32), (0.1, 0.2), 10, 400, 0.5, "sqrt", 0.01, 0.1).to_attrs()
    for key in ("noise_scales", "batch_high"):
        attrs.pop(key)  # as stored before `cap_batch` existed
    old = MeasuredPrior.from_attrs(attrs)
    assert old.noise_scales == () and old.batch_high is None and "noise scale" not in old.line()


def test_the_split_update_estimates_the_noise_from_its_halves_norms():
    """One update's [tr(Sigma), |G|^2] from a batch of B in two halves: with s the halves' mean
    squared norm and S the whole batch's, tr(Sigma) = B (s - S) and |G|^2 = 2 S - s (the module's
    formulas for c = 2 / B). The halves' gradients are taken here by hand, with autograd."""
    from objectives.task import TrialSettings
    from objectives.tasks.regression import regression
    from objectives.training.hooks import split_gradients
    from objectives.training.noise_scale import GradientParts, estimates
    from objectives.training.step import Step, TrainState

    torch.manual_seed(0)
    task = regression(TrialSettings(batch_size=16, lr=0.01, seed=0, device=torch.device("cpu"),
                                           options={"dim": 8, "n_train": 64, "n_val": 16}))
    model = task.model
    batch = (task.train[0][:16], task.train[1][:16])
    halves = []
    for part in ((batch[0][:8], batch[1][:8]), (batch[0][8:], batch[1][8:])):
        grads = torch.autograd.grad(task.loss(model(part[0]), part[1]), list(model.parameters()))
        halves.append(torch.cat([g.flatten() for g in grads]))
    s = float(sum(h.square().sum() for h in halves) / 2)
    S = float(((halves[0] + halves[1]) / 2).square().sum())
    state = TrainState(model, torch.optim.SGD(model.parameters(), lr=0.0))
    loss, norms = split_gradients(Step(task, torch.device("cpu")), state, batch,
                                  GradientParts(list(model.parameters())))
    trace, gradient_sq = estimates(norms, 16).tolist()
    assert trace == pytest.approx(16 * (s - S), rel=1e-4) and gradient_sq == pytest.approx(2 * S - s, rel=1e-4)
    whole = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(whole, (halves[0] + halves[1]) / 2, atol=1e-6)  # the update's own gradient, summed
    assert float(loss) == pytest.approx(float(task.loss(model(batch[0]), batch[1])), rel=1e-5)


CAPPED = merged(PRIOR, {"search": {"lr_range_test": {"cap_batch": True}}})


def test_the_capped_measurement_records_each_tests_noise_scale_and_repeats_exactly(tmp_path):
    config = parse_config(merged(TINY, CAPPED), tmp_path)
    first, _ = measure(config, 6)
    assert len(first.noise_scales) == 3 and all(s is None or s > 0 for s in first.noise_scales)
    assert any(s is not None for s in first.noise_scales)
    assert first.batch_high == batch_cap([8, 16, 32], list(first.noise_scales))
    assert first.updates == 13 and first.examples == 13 * 56  # the split costs no examples
    assert measure(config, 6)[0] == first and MeasuredPrior.from_attrs(first.to_attrs()) == first
    assert "gradient noise scale" in first.line()
    plain, _ = measure(parse_config(merged(TINY, PRIOR), tmp_path), 6)
    assert plain.noise_scales == () and plain.batch_high is None


@pytest.mark.parametrize("fuse", ["off", 2])
def test_a_sweep_under_a_cap_samples_no_batch_size_past_it_and_keeps_it_on_resume(tmp_path, fuse):
    """The stored prior's cap (set here at 16, so that the test does not hang on what the tests
    measure) holds every trial's batch size, alone and fused, and again after a resume."""
    data = merged(merged(TINY, CAPPED), {"study": {"name": "cap", "n_trials": 5}, "objective": {"fuse": fuse}})
    config = parse_config(data, tmp_path)
    prior = MeasuredPrior((8, 16, 32), (0.5, 0.5, 0.5), 13, 13 * 56, 0.0, "none", 1e-3, 1e-2,
                          noise_scales=(4.0, 12.0, None), batch_high=16)
    config.search.measured = prior  # as measured: the study stores it
    study = run_sweep(config, target_of(config), show_progress=False)
    assert MeasuredPrior.from_attrs(study.user_attrs[PRIOR_ATTR]) == prior
    again = parse_config(data, tmp_path)
    study = run_sweep(again, target_of(again, n_trials=8), show_progress=False)
    sizes = [TrialRecord.of(t).batch_size for t in study.trials]
    assert len(sizes) == 8 and set(sizes) <= {8, 16} and searched_as_measured(study) == prior
