"""Study-file validation: every problem names its key path; good files get sensible defaults."""

from __future__ import annotations

import pytest
import yaml

from sweeps.config.plan import check_plan
from sweeps.config.study_file import FloatRange, IntRange, load_config, parse_config
from sweeps.errors import ConfigError
from tests.conftest import TINY, merged


def error_of(**overrides) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(merged(TINY, overrides))
    return caught.value


def test_the_shipped_examples_are_valid():
    config = load_config("examples/digits.yaml")
    assert config.search.batch_sizes() == [16, 32, 64, 128, 256, 512]
    assert config.search.couplings() == ["none", "linear", "sqrt"]
    assert isinstance(config.search.epochs, IntRange)
    assert config.early_stopping.patience == 5


def test_unknown_key_suggests_the_right_one():
    err = error_of(study={"storgae": "sqlite:///x.db"})
    assert err.path == "study.storgae"
    assert "did you mean 'storage'" in str(err)


def test_unknown_top_level_section():
    err = parse_error({**TINY, "serach": {}})
    assert err.path == "serach" and "did you mean 'search'" in str(err)


def parse_error(data) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value


@pytest.mark.parametrize(
    ("overrides", "path", "words"),
    [
        ({"study": {"n_trials": "many"}}, "study.n_trials", "expected an integer"),
        ({"study": {"n_trials": 0}}, "study.n_trials", ">= 1"),
        ({"study": {"direction": "maximise"}}, "study.direction", "did you mean 'maximize'"),
        ({"sampler": {"name": "tpee"}}, "sampler.name", "did you mean 'tpe'"),
        ({"budget": {"unit": "steps"}}, "budget.unit", "must be one of"),
        ({"budget": {"per_trial": -5}}, "budget.per_trial", "> 0"),
        ({"budget": {"eval_every": 100}}, "budget.eval_every", "<= per_trial"),
        ({"search": {"batch_size": {"low": 64, "high": 16}}}, "search.batch_size", "inverted"),
        ({"search": {"batch_size": 0}}, "search.batch_size", ">= 1"),
        ({"search": {"batch_size": []}}, "search.batch_size", "at least one"),
        ({"search": {"base_lr": {"low": 0.0, "high": 1.0, "log": True}}}, "search.base_lr.low", "> 0"),
        ({"search": {"coupling": ["linear", "cubic"]}}, "search.coupling[1]", "must be one of"),
        ({"search": {"warmup_fraction": 1.5}}, "search.warmup_fraction", "[0, 1)"),
        ({"search": {"batch_size": {"low": 3, "high": 3, "power_of_two": True}}}, "search.batch_size",
         "no power of two"),
        ({"objective": {"momentum": 1.5}}, "objective.momentum", "[0, 1)"),
        ({"objective": {"device": "tpu"}}, "objective.device", "cuda"),
        ({"early_stopping": {"patience": 0}}, "early_stopping.patience", ">= 1"),
        ({"early_stopping": {"min_delta": 0.1}}, "early_stopping.patience", "required"),
    ],
)
def test_bad_values_name_their_path(overrides, path, words):
    err = error_of(**overrides)
    assert err.path == path
    assert words in str(err)


def test_missing_section_is_named():
    data = dict(TINY)
    del data["budget"]
    assert parse_error(data).path == "budget"


def test_adam_sqrt_needs_an_adam_optimizer():
    err = error_of(search={"coupling": ["none", "adam_sqrt"]})
    assert err.path == "search.coupling" and "adam" in str(err)
    parse_config(merged(TINY, {"search": {"coupling": "adam_sqrt"}, "objective": {"optimizer": "adamw"}}))


def test_example_budget_must_hold_one_update_of_the_largest_batch():
    err = error_of(budget={"unit": "examples", "per_trial": 32, "eval_every": 32})
    assert err.path == "budget.per_trial" and "batch size 64" in str(err)


def test_epoch_budget_too_small_for_one_update_is_caught_with_the_data_size():
    config = parse_config(merged(TINY, {"budget": {"unit": "epochs", "per_trial": 0.01, "eval_every": 0.01}}))
    with pytest.raises(ConfigError, match="cannot hold one update of batch size 16 on 256"):
        check_plan(config, n_train=256)
    check_plan(config, n_train=64 * 200)


def test_yaml_11_exponent_strings_are_numbers(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(
        "study: {name: s, metric: m, n_trials: 1}\nobjective: {task: regression}\n"
        "budget: {unit: updates, per_trial: 10}\nsearch: {batch_size: 8, base_lr: {low: 1e-4, high: 1e-1, log: true}}\n"
    )
    config = load_config(study)
    assert config.search.base_lr == FloatRange(1e-4, 1e-1, True)


def test_defaults():
    config = parse_config(merged(TINY, {"search": {"batch_size": {"low": 16, "high": 256, "power_of_two": True}}}))
    assert config.search.reference_batch_size == 16  # the smallest candidate
    assert config.budget.eval_every == 10  # given
    config = parse_config(merged(TINY, {"budget": {"eval_every": None}}))
    assert config.budget.eval_every == 4  # a tenth of the budget
    bare = {k: v for k, v in TINY.items() if k not in ("sampler", "pruner")}
    config = parse_config(bare)
    assert config.sampler.name == "tpe" and config.pruner.name == "hyperband"
    assert config.schedule.name == "wsd" and config.schedule.decay_fraction == 0.2  # issue 17's default
    assert not config.schedule.cooldown_evaluations and config.early_stopping is None


def test_not_a_mapping(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(study)
    study.write_text("study: {name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(study)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


# --- Misspellings, types, ranges and lists, each named by its key path ---


@pytest.mark.parametrize(
    ("overrides", "path", "suggestion"),
    [
        ({"study": {"storgae": "sqlite:///x.db"}}, "study.storgae", "storage"),
        ({"budget": {"per_trail": 10}}, "budget.per_trail", "per_trial"),
        ({"objective": {"optimiser": "adam"}}, "objective.optimiser", "optimizer"),
        ({"search": {"batch_size": {"low": 16, "hihg": 64}}}, "search.batch_size.hihg", "high"),
        ({"search": {"refrence_batch_size": 16}}, "search.refrence_batch_size", "reference_batch_size"),
        ({"search": {"coupling": "sqr"}}, "search.coupling", "sqrt"),
        ({"objective": {"optimizer": "adamm"}}, "objective.optimizer", "adam"),
        ({"pruner": {"name": "hyperbnad"}}, "pruner.name", "hyperband"),
    ],
)
def test_misspellings_get_a_did_you_mean(overrides, path, suggestion):
    err = error_of(**overrides)
    assert err.path == path
    assert f"(did you mean '{suggestion}'?)" in str(err)
    assert str(err).startswith(path + ": ")


def test_unknown_key_without_a_close_match_gets_no_guess():
    err = error_of(study={"colour": "blue"})
    assert err.path == "study.colour" and "unknown key" in str(err) and "did you mean" not in str(err)


@pytest.mark.parametrize(
    ("overrides", "path", "words"),
    [
        ({"search": {"base_lr": "fast"}}, "search.base_lr", "expected a number"),
        ({"search": {"batch_size": True}}, "search.batch_size", "expected an integer"),
        ({"search": {"batch_size": 2.5}}, "search.batch_size", "expected an integer"),
        ({"search": {"batch_size": "64"}}, "search.batch_size", "expected an integer"),
        ({"search": {"batch_size": [16, "big"]}}, "search.batch_size[1]", "expected an integer"),
        ({"study": {"name": 5}}, "study.name", "expected a string"),
        ({"objective": {"drop_last": "yes please"}}, "objective.drop_last", "true or false"),
        ({"budget": {"per_trial": [40]}}, "budget.per_trial", "expected a number"),
        ({"study": "tiny"}, "study", "expected a mapping"),
        ({"objective": {"options": [1, 2]}}, "objective.options", "expected a mapping"),
        ({"objective": {"betas": [0.9, 0.99, 0.999]}}, "objective.betas", "expected 2 items"),
        ({"search": {"batch_size": {"low": 16}}}, "search.batch_size.high", "required"),
    ],
)
def test_wrong_types_name_their_path(overrides, path, words):
    err = error_of(**overrides)
    assert err.path == path
    assert words in str(err)


@pytest.mark.parametrize(
    ("search", "path"),
    [
        ({"batch_size": {"low": 512, "high": 16, "log": True, "power_of_two": True}}, "search.batch_size"),
        ({"base_lr": {"low": 1.0, "high": 0.001, "log": True}}, "search.base_lr"),
        ({"epochs": {"low": 10, "high": 2}}, "search.epochs"),
        ({"warmup_fraction": {"low": 0.1, "high": 0.0}}, "search.warmup_fraction"),
    ],
)
def test_inverted_ranges(search, path):
    err = error_of(search=search)
    assert err.path == path and "inverted" in str(err)


@pytest.mark.parametrize(
    ("search", "path"),
    [
        ({"batch_size": []}, "search.batch_size"),
        ({"base_lr": []}, "search.base_lr"),
        ({"coupling": []}, "search.coupling"),
        ({"epochs": []}, "search.epochs"),  # an empty list must not mean "no epoch cap" nor crash later
    ],
)
def test_empty_lists(search, path):
    err = error_of(search=search)
    assert err.path == path


@pytest.mark.parametrize(
    "batch_size",
    [0, -8, [16, 0], [-1], {"low": 0, "high": 4}, {"low": 0, "high": 64, "log": True}],
)
def test_batch_sizes_below_one(batch_size):
    err = error_of(search={"batch_size": batch_size})
    assert err.path.startswith("search.batch_size")
    assert ">= 1" in str(err)


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"search": {"base_lr": float("inf")}}, "search.base_lr"),
        ({"search": {"base_lr": {"low": 0.01, "high": float("inf"), "log": True}}}, "search.base_lr"),
        ({"search": {"base_lr": "nan"}}, "search.base_lr"),
        ({"budget": {"unit": "epochs", "per_trial": float("inf"), "eval_every": 1}}, "budget.per_trial"),
        ({"budget": {"unit": "seconds", "per_trial": float("inf"), "eval_every": 1}}, "budget.per_trial"),
        ({"budget": {"unit": "epochs", "per_trial": "nan", "eval_every": 1}}, "budget.per_trial"),
    ],
)
def test_non_finite_numbers_are_rejected(overrides, path):
    # YAML spells these .inf / .nan (and "inf", "nan" reach the float coercion as strings): an infinite
    # LR or budget is never meant, and an epoch budget of .inf crashed the planner with OverflowError.
    err = error_of(**overrides)
    assert err.path.startswith(path)


def test_update_budget_must_be_whole():
    err = error_of(budget={"per_trial": 10.5, "eval_every": 1})
    assert err.path == "budget.per_trial" and "whole number of updates" in str(err)


def test_example_budget_of_exactly_the_largest_batch_holds_one_update():
    config = parse_config(merged(TINY, {"budget": {"unit": "examples", "per_trial": 64, "eval_every": 16}}))
    check_plan(config, n_train=256)
    err = error_of(budget={"unit": "examples", "per_trial": 63, "eval_every": 16})
    assert err.path == "budget.per_trial" and "63 examples" in str(err)


def test_epoch_budget_check_names_the_batch_that_gets_no_update():
    # 0.1 epoch of N = 256: B = 16 -> floor(1.6) = 1 update; B = 64 -> floor(0.4) = 0 updates.
    config = parse_config(merged(TINY, {"budget": {"unit": "epochs", "per_trial": 0.1, "eval_every": 0.1}}))
    with pytest.raises(ConfigError, match="of batch size 64 on 256") as caught:
        check_plan(config, n_train=256)
    assert caught.value.path == "budget.per_trial"
    config = parse_config(merged(TINY, {"budget": {"unit": "epochs", "per_trial": 0.25, "eval_every": 0.25}}))
    check_plan(config, n_train=256)  # 0.25 x 4 = 1 update of 64


def test_drop_last_batch_larger_than_the_data_is_a_config_error():
    config = parse_config(merged(TINY, {"objective": {"drop_last": True}, "search": {"batch_size": [16, 512]}}))
    with pytest.raises(ConfigError, match="batch size 512 exceeds the 256") as caught:
        check_plan(config, n_train=256)
    assert caught.value.path == "search.batch_size"


def test_adam_sqrt_with_sgd_scalar_and_adam_ok():
    err = error_of(search={"coupling": "adam_sqrt"})
    assert err.path == "search.coupling" and "optimizer adam or adamw" in str(err)
    adam = {"search": {"coupling": ["sqrt", "adam_sqrt"]}, "objective": {"optimizer": "adam"}}
    config = parse_config(merged(TINY, adam))
    assert config.search.couplings() == ["sqrt", "adam_sqrt"]


def test_yaml_11_exponents_without_a_dot_are_floats_everywhere(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(
        "study: {name: s, metric: m, n_trials: 1}\n"
        "objective: {task: regression, optimizer: adam, eps: 1e-8, weight_decay: 5e-4}\n"
        "budget: {unit: examples, per_trial: 6e4, eval_every: 6e3}\n"
        "search: {batch_size: [16, 64], base_lr: 1e-3, warmup_fraction: 5e-2}\n"
        "early_stopping: {patience: 3, min_delta: 1e-3}\n"
    )
    assert isinstance(yaml.safe_load(study.read_text())["search"]["base_lr"], str)  # YAML 1.1
    config = load_config(study)
    assert config.search.base_lr == 1e-3 and isinstance(config.search.base_lr, float)
    assert config.objective.eps == 1e-8 and config.objective.weight_decay == 5e-4
    assert (config.budget.per_trial, config.budget.eval_every) == (60000.0, 6000.0)
    assert config.search.warmup_fraction == 0.05
    assert config.early_stopping.min_delta == 1e-3
    assert config.search.reference_lr() == 1e-3


def test_default_reference_batch_size_is_the_smallest_candidate():
    assert parse_config(merged(TINY, {"search": {"batch_size": [64, 16, 32]}})).search.reference_batch_size == 16
    assert parse_config(merged(TINY, {"search": {"batch_size": 48}})).search.reference_batch_size == 48
    ranged = {"batch_size": {"low": 20, "high": 200, "power_of_two": True}}
    config = parse_config(merged(TINY, {"search": ranged}))
    assert config.search.batch_sizes() == [32, 64, 128] and config.search.reference_batch_size == 32
    explicit = parse_config(merged(TINY, {"search": {"batch_size": [16, 64], "reference_batch_size": 256}}))
    assert explicit.search.reference_batch_size == 256


@pytest.mark.parametrize(
    ("budget", "eval_every"),
    [
        ({"unit": "updates", "per_trial": 40}, 4),
        ({"unit": "updates", "per_trial": 5}, 1),  # never 0: floor(0.5) -> 1
        ({"unit": "updates", "per_trial": 57}, 5),  # whole updates: floor(5.7)
        ({"unit": "examples", "per_trial": 60000}, 6000),
        ({"unit": "epochs", "per_trial": 3}, 0.3),  # fractional epochs are fine
        ({"unit": "seconds", "per_trial": 2}, 0.2),
    ],
)
def test_eval_every_defaults_to_a_tenth_of_the_budget(budget, eval_every):
    config = parse_config(merged(TINY, {"budget": {**budget, "eval_every": None}}))
    assert config.budget.eval_every == pytest.approx(eval_every)


def test_base_dir_is_the_study_file_folder(tmp_path):
    folder = tmp_path / "deep" / "er"
    folder.mkdir(parents=True)
    study = folder / "s.yaml"
    study.write_text(yaml.safe_dump(TINY))
    assert load_config(study).base_dir == str(folder.resolve())
