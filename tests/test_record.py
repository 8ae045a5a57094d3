"""The trial record owns the stored names: what a real sweep stores reads back through it whole.

Trials' user attributes and the study's units are a public contract; `sweeps.trial.record` is the
one place that names them. These tests run real (tiny) sweeps and compare what the store holds
with what the record knows, so a writer that stores a name the record lacks, or a record field
that a finished trial no longer stores, fails here.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from objectives.training.budget import Budget, step_unit_of
from sweeps.config.target import target_of
from sweeps.loop.runner import SweepFailed
from sweeps.publish import notes
from sweeps.trial.record import (
    CONFIRM,
    ERROR,
    FUSED,
    GPU,
    IDENTITY,
    NAMES,
    PLAN,
    PREDICT,
    RESULT,
    STEP_UNIT_ATTR,
    WHEN_KNOWN,
    StudyUnits,
    TrialRecord,
    consumed,
)

TASKS = "tests.tasks_for_tests"
# What a trial that trained to its end on the CPU stores: no GPU group, no peak memory, no error.
FINISHED_ON_CPU = set(IDENTITY + PLAN + RESULT) - WHEN_KNOWN


def test_a_finished_trial_stores_exactly_the_record_and_reads_back_whole(tiny_config, sweep):
    study = sweep(tiny_config(search={"batch_size": [16, 64], "base_lr": {"low": 0.01, "high": 0.1, "log": True},
                                      "warmup_fraction": {"low": 0.0, "high": 0.3}, "epochs": [1, 2]}))
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        stored = t.user_attrs
        assert set(stored) - set(NAMES) == set(), "stored names the record does not know"
        assert FINISHED_ON_CPU - set(stored) == set(), "record names a finished trial did not store"
        assert set(stored) == FINISHED_ON_CPU
        record = TrialRecord.of(t)
        assert record.attrs(stored) == stored  # every stored value, unchanged, under its own field
        assert {name: getattr(record, name) for name in NAMES if name not in stored} == dict.fromkeys(
            set(NAMES) - set(stored))  # and nothing else
        # the values are the trial's own, not just present
        assert record.batch_size == t.params["batch_size"] and record.device == "cpu"
        assert record.planned_updates == min(40, t.params["epochs"] * record.iterations_per_epoch)
        assert record.updates == record.planned_updates and record.stop_reason in ("budget", "epochs")
        assert record.n_train == 256 and record.iterations_per_epoch == -(-256 // record.batch_size)
        assert (record.worker, record.sampler_seed) == (0, 0)  # the first worker draws from study.seed + 0
        assert consumed(t, "updates") == record.updates and consumed(t, "epochs") == record.epochs_completed
        # the writers' groups, rebuilt from the record, are exactly what was stored
        assert record.attrs(IDENTITY + PLAN + RESULT) == stored


def test_a_trial_that_fails_in_training_keeps_its_plan_and_its_error(tiny_config, sweep):
    config = tiny_config(study={"n_trials": 2, "max_failures": 2}, objective={"task": f"{TASKS}:crash_in_training"})
    with pytest.raises(SweepFailed, match="the loss kernel is broken"):
        sweep(config)
    target = target_of(config)
    study = optuna.load_study(study_name=target.study_name, storage=target.storage_url)
    ran = [t for t in study.trials if TrialRecord.of(t).batch_size is not None]  # not those closed unstarted
    assert len(ran) == 2 and all(t.state == TrialState.FAIL for t in ran)
    for t in ran:
        assert set(t.user_attrs) == set(IDENTITY + PLAN + ERROR) - WHEN_KNOWN
        record = TrialRecord.of(t)
        assert record.error == "ValueError: the loss kernel is broken" and record.updates is None
        assert record.attrs(t.user_attrs) == t.user_attrs


@pytest.mark.parametrize("unit, per_trial, eval_every", [
    ("updates", 20, 10), ("examples", 512, 256), ("epochs", 2, 1), ("seconds", 0.2, 0.1)])
def test_the_stored_step_unit_is_what_the_trials_report_in(tiny_config, sweep, unit, per_trial, eval_every):
    study = sweep(tiny_config(study={"n_trials": 1},
                              budget={"unit": unit, "per_trial": per_trial, "eval_every": eval_every}))
    assert StudyUnits.of(study) == StudyUnits(unit, step_unit_of(unit))
    assert study.user_attrs[STEP_UNIT_ATTR] == step_unit_of(unit)
    assert step_unit_of(unit) == {"updates": "updates", "examples": "examples", "epochs": "examples",
                                  "seconds": "ms"}[unit]
    (trial,) = study.trials
    record = TrialRecord.of(trial)
    # the steps the trial reported are in that unit: eval_every budget units on the step scale. A
    # seconds trial whose updates straddle a grid point and the cap (a loaded machine) skips the
    # point: its steps are on the grid, not necessarily its first one (a CI run reported only 200)
    first = Budget(unit, per_trial, eval_every).to_step(eval_every, record.n_train)
    steps = sorted(trial.intermediate_values)
    assert steps and all(step % first == 0 for step in steps), steps
    if unit != "seconds":
        assert steps[0] == first
    # and a step converts back to updates through the record in that unit
    per_step = record.updates_per_step(step_unit_of(unit))
    expected = {"updates": 1.0, "examples": record.updates / record.examples_seen,
                "ms": record.updates / (1000 * record.train_seconds)}[step_unit_of(unit)]
    assert per_step == pytest.approx(expected)
    assert record.updates_per_step("epochs") is None  # a budget unit, never a step unit


def test_the_groups_partition_the_record_and_gpu_is_written_only_on_cuda():
    grouped = IDENTITY + PLAN + GPU + RESULT + ERROR + CONFIRM + PREDICT + FUSED
    assert sorted(grouped) == sorted(NAMES) and len(set(grouped)) == len(grouped)
    assert TrialRecord(gpu=None, gpu_name="NVIDIA H200").attrs(GPU) == {"gpu": None, "gpu_name": "NVIDIA H200"}
    assert TrialRecord().attrs(RESULT) == dict.fromkeys(n for n in RESULT if n not in WHEN_KNOWN)


def test_the_trial_note_reads_only_record_fields_and_searched_parameters(tiny_config, sweep):
    study = sweep(tiny_config(study={"n_trials": 1}, search={
        "batch_size": [16, 64], "base_lr": {"low": 0.01, "high": 0.1, "log": True}, "coupling": ["none", "sqrt"],
        "warmup_fraction": {"low": 0.0, "high": 0.3}, "epochs": [1, 2]}))
    searched = set(study.trials[0].params)
    shown = {key for key, _ in notes.SETTINGS + notes.RESULTS}
    assert shown - set(NAMES) - searched == set()
