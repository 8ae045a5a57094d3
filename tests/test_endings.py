"""How a sweep ends: one exit code and one message for each ending, and one summary whoever prints it.

What it specifies, in this order:

1. the table of endings (`sweeps.loop.ending.ending_of`): every way a sweep can end has one exit
   code, and a failure's message names the likely fix;
2. two endings through the CLI: every trial diverged (exit 1, lower base_lr.high), a grid used up
   before n_trials (exit 0 with a note);
3. one worker and the parent of --workers print the same summary.

Real sweeps on real SQLite in tmp_path; the table is checked on in-memory studies.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from sweeps.loop.ending import ending_of
from sweeps.run import main
from tests.conftest import TINY, merged


def write_study(folder: Path, name: str = "tiny", **overrides) -> Path:
    """A tiny study file that names its own store, as the shipped examples do."""
    data = merged(merged(TINY, {"study": {"name": name, "storage": "sqlite:///from_file.db"}}), overrides)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    return monkeypatch


# --- 1. one table: every ending has one code --------------------------------------------------------

def in_memory_study(*states_and_reasons: tuple[TrialState, str | None]) -> optuna.Study:
    study = optuna.create_study()
    for i, (state, reason) in enumerate(states_and_reasons):
        value = 1.0 if state == TrialState.COMPLETE else None
        attrs = {"stop_reason": reason} if reason else {"error": "ValueError: boom"} if state == TrialState.FAIL else {}
        study.add_trial(optuna.create_trial(state=state, value=value, params={"x": float(i)},
                                            distributions={"x": optuna.distributions.FloatDistribution(0, 99)},
                                            user_attrs=attrs))
    return study


@pytest.mark.parametrize(("trials", "n_trials", "code", "says"), [
    ([(TrialState.COMPLETE, "budget")] * 3, 3, 0, ""),
    ([(TrialState.COMPLETE, "budget"), (TrialState.PRUNED, "diverged")], 2, 0, "1 of 2 trials diverged"),
    ([(TrialState.PRUNED, "diverged")] * 5, 5, 1, "all 5 trials diverged (loss NaN/inf)"),
    ([], 9, 1, "no trial finished with a value (0 of 9 finished"),
    ([(TrialState.FAIL, None)] * 2, 4, 1, "last error: ValueError: boom"),
    ([(TrialState.COMPLETE, "budget"), (TrialState.FAIL, None)], 3, 1, "stopped at 1 of 3 trials (1 failed"),
])
def test_every_ending_has_one_code(trials, n_trials, code, says):
    ending = ending_of(in_memory_study(*trials), n_trials)
    assert ending.code == code and says in ending.message
    if code:
        assert ":" in ending.message, "a failure names the likely fix"


# --- 2. two endings through the CLI -----------------------------------------------------------------

OVERSHOOT = {
    "study": {"n_trials": 3, "metric": "neg_val_mse", "direction": "maximize"},
    "objective": {"task": "tests.tasks_for_tests:overshoot", "momentum": 0.0},
    "schedule": {"name": "constant"},
    "budget": {"unit": "updates", "per_trial": 30, "eval_every": 2},
    "search": {"batch_size": 8, "base_lr": {"low": 1.0e5, "high": 1.0e6, "log": True}},
}


def test_a_sweep_where_every_trial_diverges_exits_1_and_says_so(tmp_path, no_env, capsys):
    study = write_study(tmp_path, **OVERSHOOT)
    assert main([str(study), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "all 3 trials diverged (loss NaN/inf): lower search.base_lr.high" in err


def test_a_grid_used_up_before_n_trials_exits_0_with_a_note(tmp_path, no_env, capsys):
    study = write_study(tmp_path, study={"n_trials": 5}, sampler={"name": "grid"},
                        search={"batch_size": [16, 64], "base_lr": 0.05})
    assert main([str(study), "--quiet"]) == 0
    assert "note: stopped at 2 of 5 trials: the grid has no more points" in capsys.readouterr().out


# --- 3. one summary: one worker and the parent of --workers ------------------------------------------

def test_one_worker_and_the_parent_of_workers_print_the_same_summary(tmp_path, capsys):
    """Both end through `ending.end_sweep`: the same count, best trial and recommendation paragraph
    (here on a complete study, where the parent starts no worker)."""
    study = write_study(tmp_path, study={"n_trials": 3})
    assert main([str(study), "--quiet"]) == 0
    alone = capsys.readouterr().out
    assert main([str(study), "--quiet"]) == 0
    again = capsys.readouterr().out
    assert main([str(study), "--quiet", "--workers", "2"]) == 0
    assert capsys.readouterr().out == again
    summary = alone[alone.index("3 trials finished; best val_mse = "):]
    assert again == f"study complete: 3 of 3 trials; raise --n-trials to continue\n{summary}"
    assert "\n\nRecommendation: train at batch size " in summary
