"""A small real digits sweep written as a study file, shared by the report and dashboard tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from sweeps.config.study_file import load_config
from sweeps.config.target import target_of
from sweeps.loop.runner import run_sweep

STUDY = {
    "study": {"name": "digits-small", "storage": "sqlite:///small.db", "direction": "maximize",
              "metric": "val_accuracy", "n_trials": 12, "seed": 0},
    "sampler": {"name": "random"},
    "pruner": {"name": "median", "n_startup_trials": 3},
    "objective": {"task": "digits_mlp", "optimizer": "sgd", "options": {"hidden": 32}},
    "budget": {"unit": "examples", "per_trial": 6000, "eval_every": 1500},
    "search": {"batch_size": [16, 64, 256], "base_lr": {"low": 0.01, "high": 0.5, "log": True},
               "coupling": ["none", "sqrt"], "reference_batch_size": 64},
    "dashboard": {"keep_checkpoints": 3},
}


def make_study(folder: Path, **sections) -> Path:
    """Write the study file into `folder`, run its sweep for real, return the file's path."""
    data = {**STUDY, **sections}
    path = folder / "small.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(path)
    run_sweep(config, target_of(config), show_progress=False)
    return path
