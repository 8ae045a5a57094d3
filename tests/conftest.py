"""Shared helpers: tiny real studies in a temporary SQLite store."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import optuna
import pytest

from sweeps.config.study_file import SweepConfig, parse_config
from sweeps.config.target import target_of
from sweeps.loop.runner import run_sweep

TINY = {
    "study": {"name": "tiny", "metric": "val_mse", "direction": "minimize", "n_trials": 3, "seed": 0},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
    "objective": {"task": "regression", "optimizer": "sgd", "options": {"dim": 8, "n_train": 256, "n_val": 64}},
    "budget": {"unit": "updates", "per_trial": 40, "eval_every": 10},
    "search": {"batch_size": [16, 64], "base_lr": {"low": 0.01, "high": 0.1, "log": True}},
}


def merged(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def tiny_config(tmp_path: Path):
    """make(**section_overrides) -> a validated config whose store lives in tmp_path."""

    def make(**overrides) -> SweepConfig:
        return parse_config(merged(TINY, overrides), tmp_path)

    return make


@pytest.fixture
def sweep():
    def run(config: SweepConfig, **target):
        return run_sweep(config, target_of(config, **target), show_progress=False)

    return run


def synthetic_study(storage: str | None = None, name: str = "synthetic", direction: str = "maximize") -> optuna.Study:
    """An empty study with the study attributes a sweep records (metric name, examples units), for
    tests that add trials by hand."""
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_accuracy"])
    study.set_user_attr("budget_unit", "examples")
    study.set_user_attr("step_unit", "examples")
    return study
