"""Study-file validation: every problem names its key path; good files get sensible defaults."""

from __future__ import annotations

import pytest

from sweeps.config import FloatRange, IntRange, load_config, parse_config
from sweeps.plan import check_plan
from sweeps.schema import ConfigError
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
    assert config.schedule.name == "cosine" and config.early_stopping is None


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
