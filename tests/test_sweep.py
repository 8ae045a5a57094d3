"""A sweep end to end: whole sweeps through the runner and the CLI, on real SQLite stores in tmp_path
with real training on tiny data.

What it specifies, in this order:

1. the equal-compute report grid and the budget caps, in every unit (examples, epochs, updates,
   drop_last, seconds), and Hyperband pruning only on that grid;
2. the learning rate a trial really trained with: warmup, coupling and the schedule's end;
3. best, not last: a trial's value is its best evaluation; early stopping; a non-finite loss
   prunes the trial as diverged and the sweep goes on;
4. what every trial records, the same study seed giving the same trials, micro-batches giving
   the full batch's trial;
5. failures: a crashing trial is failed with its error, consecutive failures stop the runner and
   the CLI (exit 1), failures with successes between them do not;
6. a grid sweep ends when its grid is used up;
7. resume: a rerun adds no trial, a resumed sweep samples new configurations, an interrupted trial
   does not count;
8. the shipped examples: digits reaches 95 % and resumes, the user-task example runs.

What each test reads back is what the store holds (trial states, values, intermediate values and
user_attrs), and the expected numbers come from the counting formulas (docs/background.md#counting), walked
batch by batch here. tests/test_wsd.py imports TASKS, make_config and sweep from here.
"""
from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState

from sweeps.config.study_file import SweepConfig, parse_config
from sweeps.config.target import target_of
from sweeps.errors import SweepFailed
from sweeps.loop.runner import run_sweep
from sweeps.run import main

REPO = Path(__file__).resolve().parents[1]
TASKS = "tests.tasks_for_tests"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RECORDED = {"batch_size", "lr", "coupling", "iterations_per_epoch", "planned_updates", "updates", "examples_seen",
            "epochs_completed", "train_seconds", "examples_per_second", "stop_reason", "best_step", "seed",
            "n_train", "device"}
STOP_REASONS = {"budget", "epochs", "early_stopping", "pruned", "diverged"}
TIMED = {"train_seconds", "eval_seconds", "examples_per_second"}
N = 300  # regression_small's training examples

BASE = {
    "study": {"name": "t", "metric": "val_mse", "direction": "minimize", "n_trials": 2, "seed": 0},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
    "objective": {"task": f"{TASKS}:regression_small", "optimizer": "sgd", "device": "cpu"},
    "budget": {"unit": "updates", "per_trial": 20, "eval_every": 5},
    "search": {"batch_size": 16, "base_lr": 0.05},
    "dashboard": {"notes": False, "keep_checkpoints": 0},
}


def merged(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_config(tmp_path: Path, **sections) -> SweepConfig:
    return parse_config(merged(BASE, sections), tmp_path)


def sweep(config: SweepConfig, db: Path, **target) -> optuna.Study:
    return run_sweep(config, target_of(config, storage=f"sqlite:///{db}", **target), show_progress=False)


def write_study(tmp_path: Path, name: str = "study.yaml", **sections) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(merged(BASE, sections)))
    return path


def load(db: Path, name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def walk(n: int, batch_size: int, *, updates: int | None = None, examples: int | None = None,
         drop_last: bool = False) -> tuple[int, int]:
    """(updates, examples seen) after `updates` updates, or the most updates that fit `examples`."""
    done = seen = 0
    short = [] if drop_last or n % batch_size == 0 else [n % batch_size]
    while True:
        for size in [batch_size] * (n // batch_size) + short:
            if (updates is not None and done == updates) or (examples is not None and seen + size > examples):
                return done, seen
            done, seen = done + 1, seen + size


def snapshot(trial: FrozenTrial) -> tuple:
    return (trial.number, trial.state, trial.value, trial.params, trial.datetime_start, trial.datetime_complete,
            trial.user_attrs, trial.intermediate_values)


# --- the equal-compute report grid and the budget caps, in every unit -------------------------------

@pytest.mark.parametrize(("per_trial", "grid", "by_hand"), [
    # The budget ends off the grid: one more report at its end. By hand: 3100 examples are 10 epochs
    # (3000) and then 6 more batches of 16, 2 of 48, 1 of 100, none of 128.
    (3100, [600, 1200, 1800, 2400, 3000, 3100],
     {16: (196, 3096), 48: (72, 3096), 100: (31, 3100), 128: (30, 3000)}),
    # The budget ends on the grid: its end is the last grid point, reported once.
    (3000, [600, 1200, 1800, 2400, 3000], {16: (190, 3000), 48: (70, 3000), 100: (30, 3000), 128: (30, 3000)}),
], ids=["end-off-the-grid", "end-on-the-grid"])
def test_every_batch_size_reports_on_one_grid_within_the_cap(tmp_path, per_trial, grid, by_hand):
    """The report-grid invariant, through the runner and the store: whatever the batch size (N = 300
    is a multiple of 100 only; 16, 48 and 128 leave a short last batch each epoch), a trial's
    intermediate values sit exactly at the multiples of eval_every plus the budget's end, every
    trial has used the same examples to within one batch, and none passes its cap."""
    config = make_config(tmp_path, study={"n_trials": 4}, sampler={"name": "grid"},
                         budget={"unit": "examples", "per_trial": per_trial, "eval_every": 600},
                         search={"batch_size": [16, 48, 100, 128]})
    study = sweep(config, tmp_path / "s.db")
    assert study.user_attrs["step_unit"] == "examples"
    trials = {t.user_attrs["batch_size"]: t for t in study.trials}
    assert set(trials) == {16, 48, 100, 128} and len(study.trials) == 4
    for b, trial in trials.items():
        attrs = trial.user_attrs
        assert trial.state == TrialState.COMPLETE and attrs["stop_reason"] == "budget", b
        assert sorted(trial.intermediate_values) == grid, b
        updates, seen = walk(N, b, examples=per_trial)
        assert (attrs["updates"], attrs["examples_seen"]) == (updates, seen) == by_hand[b]
        assert per_trial - b < seen <= per_trial, b  # equal compute, within one batch
        assert attrs["planned_updates"] == updates
        assert attrs["iterations_per_epoch"] == math.ceil(N / b)
        assert attrs["epochs_completed"] == pytest.approx(updates / math.ceil(N / b), abs=1e-4)


def test_epochs_budget_reports_in_examples_on_one_grid(tmp_path):
    config = make_config(tmp_path, sampler={"name": "grid"},
                         budget={"unit": "epochs", "per_trial": 2.5, "eval_every": 0.5},
                         search={"batch_size": [16, 128]})
    study = sweep(config, tmp_path / "s.db")
    assert study.user_attrs["step_unit"] == "examples"
    for trial in study.trials:
        b = trial.user_attrs["batch_size"]
        per_epoch = math.ceil(N / b)
        # steps are examples: 0.5 epoch = 150 examples of N = 300, for every batch size
        assert sorted(trial.intermediate_values) == [150, 300, 450, 600, 750], b
        updates = math.floor(2.5 * per_epoch)  # E = S / I: fractional epochs are normal
        assert trial.user_attrs["updates"] == updates
        assert trial.user_attrs["examples_seen"] == walk(N, b, updates=updates)[1]
        assert trial.user_attrs["epochs_completed"] == pytest.approx(updates / per_epoch, abs=1e-4)
    assert {t.user_attrs["updates"] for t in study.trials} == {47, 7}  # floor(2.5 * 19), floor(2.5 * 3)


def test_updates_budget_caps_updates_exactly(tmp_path):
    config = make_config(tmp_path, sampler={"name": "grid"},
                         budget={"unit": "updates", "per_trial": 25, "eval_every": 5},
                         search={"batch_size": [16, 128]})
    study = sweep(config, tmp_path / "s.db")
    assert study.user_attrs["step_unit"] == "updates"
    for trial in study.trials:
        b = trial.user_attrs["batch_size"]
        assert sorted(trial.intermediate_values) == [5, 10, 15, 20, 25]
        assert trial.user_attrs["updates"] == 25
        assert trial.user_attrs["examples_seen"] == walk(N, b, updates=25)[1]  # 400 and 2896
        assert trial.user_attrs["epochs_completed"] == pytest.approx(25 / math.ceil(N / b), abs=1e-4)


def test_drop_last_examples_budget_counts_only_full_batches(tmp_path):
    config = make_config(tmp_path, sampler={"name": "grid"}, objective={"drop_last": True},
                         budget={"unit": "examples", "per_trial": 3000, "eval_every": 600},
                         search={"batch_size": [16, 128]})
    study = sweep(config, tmp_path / "s.db")
    for trial in study.trials:
        b = trial.user_attrs["batch_size"]
        assert sorted(trial.intermediate_values) == [600, 1200, 1800, 2400, 3000]
        assert trial.user_attrs["iterations_per_epoch"] == N // b  # floor with drop_last
        updates, seen = walk(N, b, examples=3000, drop_last=True)
        assert (trial.user_attrs["updates"], trial.user_attrs["examples_seen"]) == (updates, seen)
    by_batch = {t.user_attrs["batch_size"]: t.user_attrs for t in study.trials}
    assert (by_batch[128]["updates"], by_batch[128]["examples_seen"]) == (23, 2944)  # 11 x 256 + 128
    assert by_batch[128]["epochs_completed"] == 11.5  # E = S / I with I = 2


def test_seconds_budget_trains_until_the_time_cap_and_reports_every_eval_every_in_ms(tmp_path):
    """Every trial of a seconds budget gets its seconds: it reports at 200, 400 and 600 ms.

    Four trials, so that the throughput probe of a later trial runs while the bookkeeping thread
    records the previous trial and samples the next one (what every real sweep does).
    """
    cap = 0.6
    config = make_config(tmp_path, study={"n_trials": 4},
                         budget={"unit": "seconds", "per_trial": cap, "eval_every": 0.2},
                         search={"batch_size": [16, 128]})
    study = sweep(config, tmp_path / "s.db")
    assert study.user_attrs["step_unit"] == "ms"
    assert len(study.trials) == 4
    for trial in study.trials:
        attrs = trial.user_attrs
        assert trial.state == TrialState.COMPLETE and attrs["stop_reason"] == "budget"
        assert attrs["examples_seen"] == walk(N, attrs["batch_size"], updates=attrs["updates"])[1]
        # 10 s of slack past the cap: generous for a loaded machine; the stop reason says the cap stopped it
        assert attrs["train_seconds"] < cap + 10, "the time cap must stop the trial"
        summary = (f"trial {trial.number} (B={attrs['batch_size']}): trained {attrs['train_seconds']} s of {cap}, "
                   f"{attrs['updates']} of {attrs['planned_updates']} planned updates, "
                   f"reported at {sorted(trial.intermediate_values)} ms")
        assert sorted(trial.intermediate_values) == [200, 400, 600], summary
        assert attrs["train_seconds"] >= 0.5 * cap, summary


def test_a_seconds_trial_with_a_slow_augment_plans_the_updates_its_seconds_hold(tmp_path):
    """The throughput estimate pays the augment's time as every update does. Without it, 40 searched
    epochs (640 updates) seemed to fit in 1 s, the trial was planned by its epochs with its LR on
    the update count, and the cap ended it after about 160 updates: a quarter of its schedule,
    never decayed."""
    config = make_config(tmp_path, study={"n_trials": 1},
                         objective={"task": "tests.tasks_for_tests:regression_paced",
                                    "options": {"dim": 8, "n_train": 256, "n_val": 64, "pace": 0.005}},
                         budget={"unit": "seconds", "per_trial": 1.0, "eval_every": 0.25},
                         search={"batch_size": [16], "epochs": {"low": 40, "high": 40}})
    attrs = sweep(config, tmp_path / "s.db").trials[0].user_attrs
    assert attrs["stop_reason"] == "budget"
    assert attrs["planned_updates"] < 640  # planned by the seconds, so the LR follows the clock
    assert 0.5 < attrs["updates"] / attrs["planned_updates"] < 2, attrs


def test_hyperband_prunes_only_on_the_shared_grid(tmp_path):
    config = make_config(tmp_path, study={"n_trials": 10}, pruner={"name": "hyperband", "reduction_factor": 3},
                         budget={"unit": "examples", "per_trial": 3000, "eval_every": 300},
                         search={"batch_size": [16, 128], "base_lr": {"low": 1e-4, "high": 0.1, "log": True}})
    study = sweep(config, tmp_path / "s.db")
    grid = list(range(300, 3001, 300))
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "ten trials over three decades of LR should prune some"
    for trial in study.trials:
        steps = sorted(trial.intermediate_values)
        assert steps == grid[: len(steps)], (trial.number, steps)
    for trial in pruned:
        assert trial.user_attrs["stop_reason"] == "pruned"
        assert max(trial.intermediate_values) < 3000
        # it stopped at the update that reached the grid point it was pruned at, not later
        seen, b = trial.user_attrs["examples_seen"], trial.user_attrs["batch_size"]
        assert seen - b < max(trial.intermediate_values) <= seen


# --- the learning rate the trial really trained with ------------------------------------------------

@pytest.mark.parametrize(
    ("search", "peak", "planned", "stop"),
    [
        ({"batch_size": 32, "coupling": "linear", "reference_batch_size": 16}, 0.1, 20, "budget"),
        ({"batch_size": 64, "coupling": "sqrt", "reference_batch_size": 16}, 0.1, 20, "budget"),
        # 2 searched epochs of I = 40 / 8 = 5 updates end the trial before its 20-update budget
        ({"batch_size": 8, "coupling": "none", "epochs": 2}, 0.05, 10, "epochs"),
    ],
    ids=["linear", "sqrt", "epochs"],
)
def test_warmup_and_schedule_end_as_trained(tmp_path, search, peak, planned, stop):
    """lr_probe's weight moves by exactly -lr per update, so the curve's differences are the LRs."""
    config = make_config(tmp_path, study={"n_trials": 1, "metric": "w", "direction": "maximize"},
                         objective={"task": f"{TASKS}:lr_probe", "momentum": 0.0},
                         schedule={"name": "linear", "final_lr_fraction": 0.1},
                         budget={"unit": "updates", "per_trial": 20, "eval_every": 1},
                         search={"base_lr": 0.05, "warmup_fraction": 0.2, **search})
    trial = sweep(config, tmp_path / "s.db").trials[0]
    attrs = trial.user_attrs
    assert attrs["lr"] == pytest.approx(peak)  # effective peak after coupling
    assert attrs["planned_updates"] == attrs["updates"] == planned and attrs["stop_reason"] == stop
    curve = [0.0] + [trial.intermediate_values[k] for k in range(1, planned + 1)]
    lrs = [curve[k] - curve[k + 1] for k in range(planned)]
    warmup = round(0.2 * planned)
    ramp = lrs[: warmup + 1]
    assert 0 < ramp[0] < peak / 2
    assert all(a < b for a, b in zip(ramp, ramp[1:])), ramp
    assert lrs[warmup] == pytest.approx(peak, rel=1e-4)
    assert max(lrs) == pytest.approx(peak, rel=1e-4)
    assert lrs[-1] == pytest.approx(0.1 * peak, rel=1e-3), "the schedule ends on the last planned update"
    decay = lrs[warmup:]
    steps = [a - b for a, b in zip(decay, decay[1:])]
    assert steps == pytest.approx([0.9 * peak / (len(decay) - 1)] * len(steps), rel=1e-3)


# --- best, not last; early stopping; divergence ----------------------------------------------------

OVERSHOOT = {
    "study": {"n_trials": 1, "metric": "neg_val_mse", "direction": "maximize"},
    "objective": {"task": f"{TASKS}:overshoot", "momentum": 0.0},
    "schedule": {"name": "constant"},
    "budget": {"unit": "updates", "per_trial": 30, "eval_every": 2},
    "search": {"batch_size": 8, "base_lr": 0.05},
}


def overshoot_metric(updates: int, lr: float = 0.05) -> float:
    """The weight is 2 - 2 (1 - 2 lr)^k after k updates; validation wants 1."""
    return -((1 - 2 * (1 - 2 * lr) ** updates) ** 2)


def test_trial_value_is_its_best_evaluation_not_its_last(tmp_path):
    config = make_config(tmp_path, **OVERSHOOT)
    trial = sweep(config, tmp_path / "s.db").trials[0]
    curve = trial.intermediate_values
    assert sorted(curve) == list(range(2, 31, 2))
    assert curve[6] == pytest.approx(overshoot_metric(6), abs=1e-5)
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["stop_reason"] == "budget"
    assert trial.value == max(curve.values()) == curve[6]
    assert trial.value > curve[30] + 0.5, "the metric peaked and degraded"
    assert trial.user_attrs["best_step"] == 6


def test_early_stopping_completes_with_the_best_value(tmp_path):
    config = make_config(tmp_path, early_stopping={"patience": 3, "min_delta": 0.0}, **OVERSHOOT)
    trial = sweep(config, tmp_path / "s.db").trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["stop_reason"] == "early_stopping"
    assert sorted(trial.intermediate_values) == [2, 4, 6, 8, 10, 12]  # the best at 6, then 3 worse
    assert trial.user_attrs["updates"] == 12 < trial.user_attrs["planned_updates"] == 30
    assert trial.value == trial.intermediate_values[6] == max(trial.intermediate_values.values())
    assert trial.user_attrs["best_step"] == 6


def test_nan_or_inf_loss_prunes_as_diverged_and_the_sweep_goes_on(tmp_path):
    # at LR 1e5 or 1e6 the weight grows ~1e5-fold an update: the loss is infinite at update 5
    config = make_config(tmp_path, **merged(OVERSHOOT, {
        "study": {"n_trials": 4}, "sampler": {"name": "grid"}, "budget": {"eval_every": 10},
        "search": {"base_lr": [0.05, 1.0e6, 0.02, 1.0e5]}}))
    study = sweep(config, tmp_path / "s.db")
    assert len(study.trials) == 4
    by_lr = {t.params["base_lr"]: t for t in study.trials}
    for lr in (1.0e6, 1.0e5):
        trial = by_lr[lr]
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["stop_reason"] == "diverged"
        assert trial.user_attrs["updates"] <= 6, "a non-finite loss stops the trial at once, not at the next evaluation"
        assert trial.intermediate_values == {}
    for lr in (0.05, 0.02):
        assert by_lr[lr].state == TrialState.COMPLETE and by_lr[lr].user_attrs["stop_reason"] == "budget"
        assert sorted(by_lr[lr].intermediate_values) == [10, 20, 30]
    diverged = [t.number for t in study.trials if t.user_attrs["stop_reason"] == "diverged"]
    assert min(diverged) < max(t.number for t in study.trials if t.state == TrialState.COMPLETE), \
        "a trial after the diverged one must have trained"


# --- what every trial records, determinism, accumulation -------------------------------------------

DETERMINISTIC = {
    "study": {"n_trials": 6},
    "sampler": {"name": "tpe", "n_startup_trials": 3},
    "pruner": {"name": "hyperband", "reduction_factor": 3},
    "budget": {"unit": "examples", "per_trial": 2400, "eval_every": 300},
    "search": {"batch_size": [16, 64, 128], "base_lr": {"low": 0.003, "high": 0.3, "log": True},
               "coupling": ["none", "linear", "sqrt"], "reference_batch_size": 32,
               "warmup_fraction": {"low": 0.0, "high": 0.1}},
}


def without_timing(trial: FrozenTrial) -> tuple:
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in TIMED}
    return trial.number, trial.state, trial.params, trial.value, trial.intermediate_values, attrs


def test_same_study_seed_same_trials_in_two_stores_and_every_attribute_recorded(tmp_path):
    config = make_config(tmp_path, **DETERMINISTIC, dashboard={"notes": True, "keep_checkpoints": 1})
    first = sweep(config, tmp_path / "a.db")
    second = sweep(make_config(tmp_path, **DETERMINISTIC), tmp_path / "b.db")
    assert [without_timing(t) for t in first.trials] == [without_timing(t) for t in second.trials]
    other = sweep(make_config(tmp_path, **merged(DETERMINISTIC, {"study": {"seed": 1}})), tmp_path / "c.db")
    assert [t.value for t in other.trials] != [t.value for t in first.trials]

    finished = first.get_trials(states=FINISHED)
    assert len(finished) == 6 and len(first.trials) == 6
    assert first.get_trials(states=(TrialState.COMPLETE,)), "the value checks for complete trials below need one"
    assert first.metric_names == ["val_mse"]
    assert len({t.user_attrs["seed"] for t in first.trials}) == 6, "each trial has its own seed"
    for trial in finished:
        attrs = trial.user_attrs
        missing = RECORDED - set(attrs)
        assert not missing, f"trial {trial.number} lacks {sorted(missing)}"
        b = attrs["batch_size"]
        assert b in (16, 64, 128) and attrs["n_train"] == N and attrs["device"] == "cpu"
        assert attrs["iterations_per_epoch"] == math.ceil(N / b)
        factor = {"none": 1.0, "linear": b / 32, "sqrt": math.sqrt(b / 32)}[attrs["coupling"]]
        assert attrs["lr"] == pytest.approx(trial.params["base_lr"] * factor)
        assert attrs["examples_seen"] == walk(N, b, updates=attrs["updates"])[1] <= 2400
        assert attrs["epochs_completed"] == pytest.approx(attrs["updates"] / math.ceil(N / b), abs=1e-4)
        assert attrs["stop_reason"] in STOP_REASONS
        assert attrs["train_seconds"] > 0
        assert attrs["examples_per_second"] == pytest.approx(attrs["examples_seen"] / attrs["train_seconds"],
                                                             rel=0.02)
        assert attrs["best_step"] in trial.intermediate_values
        if trial.state == TrialState.COMPLETE:
            assert trial.value == min(trial.intermediate_values.values())  # minimised: the best
            assert trial.intermediate_values[attrs["best_step"]] == trial.value


def test_micro_batches_give_the_same_trial_as_the_full_batch(tmp_path):
    sections = {"study": {"n_trials": 1}, "budget": {"unit": "epochs", "per_trial": 3, "eval_every": 1},
                "objective": {"optimizer": "adam"}, "search": {"batch_size": 64, "base_lr": 0.05}}
    full = sweep(make_config(tmp_path, **sections), tmp_path / "a.db").trials[0]
    split = sweep(make_config(tmp_path, **merged(sections, {"objective": {"max_micro_batch": 16}})),
                  tmp_path / "b.db").trials[0]
    assert (split.user_attrs["accumulation_steps"], split.user_attrs["micro_batch"]) == (4, 16)
    assert full.user_attrs["accumulation_steps"] == 1
    assert split.user_attrs["updates"] == full.user_attrs["updates"] == 3 * math.ceil(N / 64)
    assert sorted(split.intermediate_values) == sorted(full.intermediate_values) == [300, 600, 900]
    for step, value in full.intermediate_values.items():
        assert split.intermediate_values[step] == pytest.approx(value, rel=1e-4)
    assert split.value == pytest.approx(full.value, rel=1e-4)


# --- failures --------------------------------------------------------------------------------------

def test_a_crashing_trial_is_failed_with_its_error_and_the_sweep_goes_on(tmp_path):
    config = make_config(tmp_path, study={"n_trials": 4, "max_failures": 10},
                         objective={"task": f"{TASKS}:crash_on_batch", "options": {"crash_batch": 64}},
                         search={"batch_size": [16, 64], "base_lr": [0.01, 0.05]})
    study = sweep(config, tmp_path / "s.db")
    failed = study.get_trials(states=(TrialState.FAIL,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4 and failed
    for trial in failed:
        assert trial.value is None
        assert trial.user_attrs["error"] == "RuntimeError: shard for batch 64 is corrupt"
    assert all(t.user_attrs["batch_size"] == 16 for t in complete)
    assert min(t.number for t in failed) < max(t.number for t in complete)


def test_consecutive_failures_stop_the_runner_and_failed_trials_keep_their_plan(tmp_path):
    config = make_config(tmp_path, study={"n_trials": 5, "max_failures": 3},
                         objective={"task": f"{TASKS}:crash_in_training"},
                         search={"batch_size": [16, 64]})
    db = tmp_path / "s.db"
    with pytest.raises(SweepFailed, match=r"3 trials in a row failed.*ValueError: the loss kernel is broken"):
        sweep(config, db)
    study = load(db)
    ran = [t for t in study.trials if not t.user_attrs["error"].startswith("not started")]
    assert len(ran) == 3 and {t.state for t in study.trials} == {TrialState.FAIL}
    for trial in ran:
        assert trial.user_attrs["error"] == "ValueError: the loss kernel is broken"
        b = trial.user_attrs["batch_size"]  # what was planned before training is kept
        assert trial.user_attrs["planned_updates"] == 20 and trial.user_attrs["iterations_per_epoch"] == -(-N // b)


def test_cli_exits_1_with_a_clear_message_after_max_failures(tmp_path, capsys):
    study_file = write_study(tmp_path, study={"n_trials": 5, "max_failures": 2, "storage": "sqlite:///cli.db"},
                             objective={"task": f"{TASKS}:crash_in_training"},
                             search={"batch_size": [16, 64]})
    assert main([str(study_file), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error: 2 trials in a row failed; last error: ValueError: the loss kernel is broken" in err
    study = load(tmp_path / "cli.db")
    assert {t.state for t in study.trials} == {TrialState.FAIL}
    assert len(study.trials) <= 3  # the two that ran, at most one asked ahead and closed unstarted


def test_failures_with_successes_between_them_do_not_stop_the_sweep(tmp_path, capsys):
    counter = tmp_path / "builds"
    study_file = write_study(tmp_path, study={"n_trials": 3, "max_failures": 2, "storage": "sqlite:///f.db"},
                             objective={"task": f"{TASKS}:scripted",
                                        "options": {"counter": str(counter), "fail": [2, 4]}},
                             search={"base_lr": [0.01, 0.05]})
    assert main([str(study_file), "--quiet"]) == 0, capsys.readouterr().err
    study = load(tmp_path / "f.db")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 2
    assert counter.read_text() == "5"


# --- a grid sweep ends with its grid ---------------------------------------------------------------

def test_grid_sweep_ends_when_the_grid_is_exhausted(tmp_path):
    config = make_config(tmp_path, study={"n_trials": 10}, sampler={"name": "grid"},
                         search={"batch_size": [16, 64], "base_lr": [0.01, 0.05]})
    study = sweep(config, tmp_path / "s.db")
    assert len(study.trials) == 4
    assert sorted((t.user_attrs["batch_size"], t.params["base_lr"]) for t in study.trials) == [
        (16, 0.01), (16, 0.05), (64, 0.01), (64, 0.05)]


# --- resume ----------------------------------------------------------------------------------------

def test_rerun_adds_no_trial_and_more_n_trials_adds_only_the_difference(tmp_path, capsys):
    study_file = write_study(tmp_path, study={"n_trials": 3, "storage": "sqlite:///r.db"},
                             search={"batch_size": [16, 64], "base_lr": {"low": 0.01, "high": 0.1, "log": True}})
    db = tmp_path / "r.db"  # a relative SQLite path resolves beside the study file
    assert main([str(study_file), "--quiet"]) == 0
    before = [snapshot(t) for t in load(db).trials]
    assert len(before) == 3 and all(s[1] == TrialState.COMPLETE for s in before)

    assert main([str(study_file), "--quiet"]) == 0
    assert [snapshot(t) for t in load(db).trials] == before, "finished trials must never be re-run"

    assert main([str(study_file), "--quiet", "--n-trials", "5"]) == 0
    after = load(db).trials
    assert [t.number for t in after] == [0, 1, 2, 3, 4]
    assert all(t.state in FINISHED for t in after)
    assert [snapshot(t) for t in after[:3]] == before
    capsys.readouterr()


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_sweep_samples_new_configurations(tmp_path, sampler, capsys):
    """Resuming must not replay the sampler's random stream from the start: the trials it adds
    would repeat the configurations of the study's first trials (finished trials run again)."""
    study_file = write_study(tmp_path, study={"n_trials": 3, "storage": "sqlite:///r.db"}, sampler={"name": sampler},
                             search={"batch_size": [16, 32, 64, 128],
                                     "base_lr": {"low": 0.001, "high": 0.1, "log": True}})
    assert main([str(study_file), "--quiet"]) == 0
    assert main([str(study_file), "--quiet", "--n-trials", "6"]) == 0
    trials = load(tmp_path / "r.db").trials
    assert len(trials) == 6
    first = [t.params for t in trials[:3]]
    repeated = [t.number for t in trials[3:] if t.params in first]  # base_lr is continuous: never by chance
    assert not repeated, f"resumed trials {repeated} repeat earlier configurations: {[t.params for t in trials]}"
    capsys.readouterr()


def test_an_interrupted_trial_does_not_count_and_the_rerun_completes_the_study(tmp_path, capsys):
    counter = tmp_path / "builds"
    study_file = write_study(tmp_path, study={"n_trials": 3, "storage": "sqlite:///i.db"},
                             objective={"task": f"{TASKS}:scripted",
                                        "options": {"counter": str(counter), "interrupt": 2}},
                             search={"base_lr": [0.01, 0.03, 0.05]})
    db = tmp_path / "i.db"
    assert main([str(study_file), "--quiet"]) == 130
    assert "resume" in capsys.readouterr().err
    study = load(db)
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    first = study.trials[0]
    assert first.state == TrialState.COMPLETE
    interrupted = study.trials[1]
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs["error"] == "interrupted: KeyboardInterrupt"
    failed = study.get_trials(states=(TrialState.FAIL,))  # and, if there was one, the trial asked ahead
    assert failed[0].number == interrupted.number and len(failed) <= 2
    assert all(t.user_attrs["error"].startswith("not started") for t in failed[1:])
    # whose it was: the worker that stopped (`sweeps studies --workers` counts it among its failed)
    assert (interrupted.user_attrs["worker"], interrupted.user_attrs["sampler_seed"]) == (
        first.user_attrs["worker"], first.user_attrs["sampler_seed"])

    assert main([str(study_file), "--quiet"]) == 0
    study = load(db)
    assert len(study.get_trials(states=FINISHED)) == 3, "the interrupted trial is not one of the 3"
    assert snapshot(study.trials[0]) == snapshot(first)
    assert study.trials[1].state == TrialState.FAIL
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    # the interrupted configuration ran again and finished
    assert any(t.params == interrupted.params and t.state in FINISHED for t in study.trials[2:])


# --- the shipped examples --------------------------------------------------------------------------

def test_the_digits_example_reaches_95_percent_and_resumes(tmp_path, run_here):
    """`sweeps run digits.yaml` twice, in this process (the entry point's own process is tested elsewhere)."""
    shutil.copy(REPO / "examples" / "digits.yaml", tmp_path / "digits.yaml")
    command = ["digits.yaml", "--quiet"]
    done = run_here(command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "digits.db").exists()
    study = load(tmp_path / "digits.db", "digits-mlp")
    finished = study.get_trials(states=FINISHED)
    assert len(finished) >= 30
    assert study.best_value >= 0.95
    assert len({t.user_attrs["batch_size"] for t in finished}) >= 3
    # the coupling rule is searched; which rules TPE tries in 40 trials depends on the fused groups' size,
    # which `objective.fuse: auto` measures on the machine (this machine's run tried none and linear only)
    couplings = {t.user_attrs["coupling"] for t in finished}
    assert len(couplings) >= 2 and couplings <= {"none", "linear", "sqrt"}
    before = [snapshot(t) for t in study.trials]
    again = run_here(command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [snapshot(t) for t in load(tmp_path / "digits.db", "digits-mlp").trials] == before


def test_the_user_task_example_runs_from_the_repository_root(tmp_path, run_here):
    """In this process; each entry point imports the example's task from the repository root as a real
    subprocess in tests/test_console.py (test_the_repository_example_task_imports_from_the_repository_root)."""
    db = tmp_path / "moons.db"
    done = run_here(["examples/custom_task.yaml", "--quiet", "--n-trials", "5", "--storage", f"sqlite:///{db}"],
                    cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best val_accuracy" in done.stdout
    study = load(db, "two-moons")
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == 5 and study.best_value > 0.8
    for trial in finished:
        assert trial.user_attrs["batch_size"] in (16, 64, 256)
        assert trial.user_attrs["updates"] <= 600 and trial.user_attrs["n_train"] == 1600
