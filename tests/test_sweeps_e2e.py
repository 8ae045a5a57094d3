"""Whole sweeps on real SQLite stores: what each trial records, failures, pruning grid, examples."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from objectives.task import Task, TrialSettings
from objectives.tasks.regression import regression
from sweeps.run import main

REPO = Path(__file__).resolve().parents[1]
RECORDED = {"batch_size", "lr", "coupling", "iterations_per_epoch", "planned_updates", "updates", "examples_seen",
            "epochs_completed", "train_seconds", "examples_per_second", "stop_reason", "best_step", "seed",
            "n_train", "device"}


def test_every_trial_records_what_it_derived(tiny_config, sweep):
    config = tiny_config(search={"coupling": ["none", "linear", "sqrt"], "reference_batch_size": 16,
                                 "warmup_fraction": {"low": 0.0, "high": 0.1}})
    study = sweep(config)
    assert len(study.trials) == 3
    for trial in study.trials:
        attrs = trial.user_attrs
        assert RECORDED <= set(attrs)
        b = attrs["batch_size"]
        assert attrs["iterations_per_epoch"] == -(-256 // b)
        assert attrs["updates"] == attrs["planned_updates"] == 40
        assert attrs["examples_seen"] == 40 * b  # 256 is a multiple of 16 and 64
        assert attrs["epochs_completed"] == pytest.approx(40 / attrs["iterations_per_epoch"], abs=1e-3)
        factor = {"none": 1, "linear": b / 16, "sqrt": (b / 16) ** 0.5}[attrs["coupling"]]
        assert attrs["lr"] == pytest.approx(trial.params["base_lr"] * factor)
        assert attrs["device"] == "cpu" and attrs["n_train"] == 256
        assert trial.value == min(trial.intermediate_values.values())  # best, minimised
        assert trial.intermediate_values[attrs["best_step"]] == trial.value
    assert study.metric_names == ["val_mse"]


def test_same_seed_same_values(tmp_path, tiny_config, sweep):
    first = sweep(tiny_config(), storage=f"sqlite:///{tmp_path}/a.db")
    second = sweep(tiny_config(), storage=f"sqlite:///{tmp_path}/b.db")
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert [t.value for t in first.trials] == [t.value for t in second.trials]
    other = sweep(tiny_config(study={"seed": 1}), storage=f"sqlite:///{tmp_path}/c.db")
    assert [t.params for t in other.trials] != [t.params for t in first.trials]


def test_diverged_trials_are_pruned_and_the_sweep_goes_on(tiny_config, sweep):
    config = tiny_config(study={"n_trials": 6}, sampler={"name": "random"},
                         search={"batch_size": 32, "base_lr": [0.05, 1.0e4]})
    study = sweep(config)
    states = {t.params["base_lr"]: (t.state, t.user_attrs["stop_reason"]) for t in study.trials}
    assert states[1.0e4] == (TrialState.PRUNED, "diverged")
    assert states[0.05] == (TrialState.COMPLETE, "budget")
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 6


def test_early_stopping_completes_with_the_best_value(tiny_config, sweep):
    config = tiny_config(study={"n_trials": 1}, budget={"per_trial": 400, "eval_every": 10},
                         search={"batch_size": 64, "base_lr": 0.3}, early_stopping={"patience": 2, "min_delta": 0.05})
    trial = sweep(config).trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["stop_reason"] == "early_stopping"
    assert trial.user_attrs["updates"] < 400
    assert trial.value == min(trial.intermediate_values.values())


def test_hyperband_prunes_on_the_budget_grid(tiny_config, sweep):
    config = tiny_config(study={"n_trials": 12}, sampler={"name": "random"}, pruner={"name": "hyperband"},
                         budget={"per_trial": 90, "eval_every": 10},
                         search={"base_lr": {"low": 1e-4, "high": 0.2, "log": True}})
    study = sweep(config)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "a dozen trials over three decades of LR should prune some"
    for trial in pruned:
        assert trial.user_attrs["stop_reason"] == "pruned"
        assert trial.user_attrs["updates"] == max(trial.intermediate_values) < 90


def broken(settings: TrialSettings) -> Task:
    if settings.batch_size == 64:
        raise RuntimeError("shard 3 is corrupt")
    return regression(settings)


def always_broken(settings: TrialSettings) -> Task:
    task = regression(settings)
    if settings.seed != 0:  # the reference build (seed 0) works, every trial fails
        task.model = torch.nn.Linear(3, 1)  # wrong input width
    return task


def test_a_crashing_trial_fails_with_its_error_and_the_sweep_goes_on(tiny_config, sweep):
    config = tiny_config(study={"n_trials": 3, "max_failures": 10},
                         objective={"task": "tests.test_sweeps_e2e:broken"})
    study = sweep(config)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert failed and all("shard 3 is corrupt" in t.user_attrs["error"] for t in failed)


def test_consecutive_failures_stop_the_cli_with_exit_1(tmp_path, capsys):
    study_file = tmp_path / "s.yaml"
    study_file.write_text(
        "study: {name: s, metric: val_mse, direction: minimize, n_trials: 5, max_failures: 2}\n"
        "objective: {task: 'tests.test_sweeps_e2e:always_broken', options: {dim: 8}}\n"
        "budget: {unit: updates, per_trial: 10}\nsearch: {batch_size: 8, base_lr: 0.1}\n"
    )
    assert main([str(study_file), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "2 trials in a row failed" in err and "RuntimeError" in err
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    assert {t.state for t in study.trials} == {TrialState.FAIL}
    ran = [t for t in study.trials if "not started" not in t.user_attrs["error"]]
    assert len(ran) == 2 and all("RuntimeError" in t.user_attrs["error"] for t in ran)
    assert len(study.trials) <= 3  # at most the one asked ahead, closed as not started


def interrupting(settings: TrialSettings) -> Task:
    if settings.params.get("base_lr", 0) > 0.05 and os.environ.get("SWEEPS_TEST_INTERRUPT"):
        raise KeyboardInterrupt
    return regression(settings)


def test_interrupted_trial_is_failed_and_not_counted(tmp_path, tiny_config, monkeypatch, capsys):
    study_file = tmp_path / "s.yaml"
    study_file.write_text(
        "study: {name: s, metric: val_mse, direction: minimize, n_trials: 3}\nsampler: {name: random}\n"
        "objective: {task: 'tests.test_sweeps_e2e:interrupting', options: {dim: 8, n_train: 128}}\n"
        "budget: {unit: updates, per_trial: 10}\nsearch: {batch_size: 8, base_lr: [0.01, 0.1]}\n"
    )
    monkeypatch.setenv("SWEEPS_TEST_INTERRUPT", "1")
    assert main([str(study_file), "--quiet"]) == 130
    assert "resume" in capsys.readouterr().err
    storage = f"sqlite:///{tmp_path}/s.db"
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert TrialState.FAIL in states and TrialState.RUNNING not in states
    monkeypatch.delenv("SWEEPS_TEST_INTERRUPT")
    assert main([str(study_file), "--quiet"]) == 0
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.user_attrs["error"] for t in failed][:1] == ["interrupted: KeyboardInterrupt"]
    assert len(failed) <= 2  # the interrupted trial and, if there was one, the trial asked ahead
    assert all(t.user_attrs["error"].startswith("not started") for t in failed[1:])  # the one asked ahead


def test_grid_sweep_ends_when_the_grid_is_exhausted(tiny_config, sweep, capsys):
    config = tiny_config(study={"n_trials": 10}, sampler={"name": "grid"},
                         search={"batch_size": [16, 64], "base_lr": [0.01, 0.05]})
    study = sweep(config)
    assert len(study.trials) == 4
    assert sorted((t.user_attrs["batch_size"], t.params["base_lr"]) for t in study.trials) == [
        (16, 0.01), (16, 0.05), (64, 0.01), (64, 0.05)]
