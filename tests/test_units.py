"""A budget unit is one class: a toy unit defined here is validated, in the schema and swept,
with no other edit."""

from __future__ import annotations

import math

import pytest

from objectives.training.budget import Budget, plan_trial
from objectives.training.units import BudgetUnit, register, step_unit_of, unit_named, unit_names, unregister
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.errors import ConfigError
from sweeps.loop.runner import run_sweep
from sweeps.schema_cmd import study_schema
from sweeps.trial.record import consumed
from tests.conftest import TINY, merged


class Decaupdates(BudgetUnit):
    """Tens of updates; report steps count updates."""

    name = "decaupdates"
    step_unit = "updates"
    consumed_attr = "updates"
    steps_attr = ("updates", 1)

    def step_scale(self, n_train):
        return 10

    def updates_cap(self, budget, n, batch_size, drop_last):
        return math.floor(budget.per_trial * 10 + 1e-9)

    def updates_to_reach(self, units, plan, budget):
        return math.ceil(units * 10 - 1e-9)

    def planned(self, plan, budget):
        return plan.planned_updates / 10

    def trained(self, result, plan, budget):
        return result.updates / 10

    def consumed(self, attrs):
        return float(attrs.get("updates") or 0) / 10

    def cooldown(self, attrs):
        return attrs["cooldown_updates"] / 10


@pytest.fixture
def toy_unit():
    register(Decaupdates)
    yield unit_named("decaupdates")
    unregister("decaupdates")


def test_the_built_in_units_in_the_study_files_order():
    assert unit_names() == ("updates", "examples", "epochs", "seconds", "tokens")
    assert [unit_named(u).timed for u in unit_names()] == [False, False, False, True, False]
    with pytest.raises(ValueError, match="unknown budget unit 'steps'; known: updates, examples"):
        unit_named("steps")


def test_a_registered_name_is_not_taken_twice():
    class Other(Decaupdates):
        name = "updates"

    with pytest.raises(ValueError, match="'updates' is already registered"):
        register(Other)


def test_a_toy_unit_is_validated_in_the_schema_and_swept(tmp_path, toy_unit):
    schema = study_schema()["$defs"]
    assert "decaupdates" in schema["BudgetSection"]["properties"]["unit"]["enum"]
    assert "decaupdates" in schema["TotalBudgetSection"]["properties"]["unit"]["enum"]
    assert step_unit_of("decaupdates") == "updates"
    budget = Budget("decaupdates", 4, 1)
    assert plan_trial(budget, 256, 16).planned_updates == 40 and budget.to_step(1, 256) == 10
    study_file = merged(TINY, {"study": {"n_trials": 2, "total_budget": {"amount": 100, "unit": "decaupdates"}},
                               "budget": {"unit": "decaupdates", "per_trial": 4, "eval_every": 1}})
    config = parse_config(study_file, tmp_path)
    study = run_sweep(config, target_of(config, f"sqlite:///{tmp_path / 's.db'}"), show_progress=False)
    assert study.user_attrs["budget_unit"] == "decaupdates" and study.user_attrs["step_unit"] == "updates"
    for trial in study.trials:
        assert trial.state.name == "COMPLETE"
        assert sorted(trial.intermediate_values) == [10, 20, 30, 40]
        assert trial.user_attrs["updates"] == 40 and consumed(trial, "decaupdates") == 4.0


def test_an_unknown_unit_names_the_registered_ones(tmp_path, toy_unit):
    words = "budget.unit: must be one of updates, .*, tokens, decaupdates; got 'decaupdate'.*'decaupdates'"
    with pytest.raises(ConfigError, match=words):
        parse_config(merged(TINY, {"budget": {"unit": "decaupdate"}}), tmp_path)
