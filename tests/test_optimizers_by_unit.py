"""Every optimizer (sgd, adam, adamw) under every budget unit (updates, examples, epochs, seconds): a
one-trial sweep of each pair completes and trains. Real sweeps on real SQLite in tmp_path."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from sweeps.config.study_file import parse_config
from tests.conftest import TINY, merged


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize(("unit", "per_trial", "eval_every"), [
    ("updates", 20, 10), ("examples", 640, 320), ("epochs", 2, 1), ("seconds", 0.3, 0.15)])
def test_each_optimizer_under_each_budget_unit(tmp_path, sweep, optimizer, unit, per_trial, eval_every):
    config = parse_config(merged(TINY, {
        "study": {"n_trials": 1}, "objective": {"optimizer": optimizer},
        "budget": {"unit": unit, "per_trial": per_trial, "eval_every": eval_every},
        "search": {"batch_size": [32], "base_lr": {"low": 0.001, "high": 0.01, "log": True}}}), tmp_path)
    trial = sweep(config).trials[0]
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
    assert trial.user_attrs["updates"] > 0
