"""The overhead benchmark's replay: each finished trial, trained again alone, runs as it ran in the sweep."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "overhead.py"
spec = importlib.util.spec_from_file_location("overhead", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up
spec.loader.exec_module(bench)


def test_replay_stops_pruned_trials_where_the_sweep_pruned_them(tmp_path):
    config = bench.service_config(tmp_path, n_trials=6, examples=4000, seed=0)
    service, study = bench.service_sweep(config)
    assert service.pruned >= 1  # the case that needs the replay to stop where the sweep stopped
    inside, examples_seen = bench.replay(config, study)  # raises when a trial replays other updates
    assert examples_seen == service.examples and inside > 0


def test_replay_lets_a_diverged_trial_diverge_where_it_did(tiny_config):
    # w grows ~1e5-fold an update: reports at updates 2 and 4, then an infinite loss at update 5,
    # between two reports (a diverged trial is PRUNED too, but no report ended it)
    config = tiny_config(study={"metric": "neg_val_mse", "direction": "maximize", "n_trials": 1},
                         objective={"task": "tests.tasks_for_tests:overshoot", "momentum": 0.0},
                         schedule={"name": "constant"}, budget={"per_trial": 30, "eval_every": 2},
                         search={"batch_size": 8, "base_lr": 1.0e5})
    service, study = bench.service_sweep(config)
    (trial,) = study.trials
    attrs = trial.user_attrs
    assert attrs["stop_reason"] == "diverged" and attrs["updates"] > max(trial.intermediate_values)
    assert bench.replay(config, study)[1] == service.examples
