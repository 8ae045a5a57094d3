"""`sweeps predict` (sweeps/results/frontier.py, sweeps/predict.py, sweeps/prediction_check.py):
planted power laws are recovered, the fits refuse what they cannot carry, and on the digits task
a sweep with horizons is predicted, exported and verified at a larger budget."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeps.config.study_file import load_config
from sweeps.errors import Refusal
from sweeps.predict import main
from sweeps.results.frontier import MAX_REACH, frontier, predict
from sweeps.trial.record import PREDICT_STUDY_ATTR, PREDICTION_ATTR, TrialRecord

LEVELS = (1e4, 2e4, 4e4, 8e4)


def planted(n: int = 60, alpha_b: float = 0.5, alpha_lr: float = -0.25, noise: float = 0.002, seed: int = 0,
            levels=LEVELS, sizes=None, maximize: bool = True, noise_at: dict | None = None) -> list:
    """Trials whose value at compute C peaks at B* = 64 (C / 1e4)^alpha_b and lr* = 0.01 (C / 1e4)^alpha_lr,
    quadratic in log2 B and log10 lr around them, plus noise (`noise_at`: another SD at some levels)."""
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(n):
        batch_size = int(rng.choice(sizes)) if sizes else int(round(2 ** rng.uniform(3, 11)))
        log_lr = rng.uniform(-4, 0)
        horizons = []
        for c in levels:
            b_star = math.log2(64 * (c / 1e4) ** alpha_b)
            y_star = math.log10(0.01 * (c / 1e4) ** alpha_lr)
            value = (0.9 + 0.02 * math.log10(c / 1e4) - 0.01 * (math.log2(batch_size) - b_star) ** 2
                     - 0.05 * (log_lr - y_star) ** 2 + rng.normal(0, (noise_at or {}).get(c, noise)))
            value = value if maximize else -value
            horizons.append({"length": c, "step": int(c), "value": value, "best_step": int(c), "updates": 1,
                             "examples": int(c), "stop_reason": "budget", "curve": [], "branch_updates": 0,
                             "branch_examples": 0, "branch_seconds": 0.0})
        trials.append(create_trial(
            state=TrialState.COMPLETE, value=horizons[-1]["value"], params={"base_lr": 10**log_lr},
            distributions={"base_lr": FloatDistribution(1e-6, 10, log=True)},
            user_attrs={"batch_size": batch_size, "lr": 10**log_lr, "coupling": "none", "horizons": horizons,
                        "planned_updates": 1000, "warmup_updates": 20, "n_train": 10**6}))
    study = optuna.create_study(direction="maximize" if maximize else "minimize")
    study.add_trials(trials)
    return study.trials


@pytest.mark.parametrize("maximize", [True, False])
def test_planted_laws_are_recovered_within_ten_percent(maximize):
    front = frontier(planted(maximize=maximize), maximize)
    assert front.batch_law.slope == pytest.approx(0.5, rel=0.1)
    assert front.lr_law.slope == pytest.approx(-0.25, rel=0.1)
    assert front.batch_exponent.low < 0.5 < front.batch_exponent.high
    prediction = predict(front, 8e5)  # 10x the largest level
    assert prediction.reach == pytest.approx(10)
    assert prediction.batch_size == pytest.approx(64 * 80**0.5, rel=0.15)
    assert prediction.lr == pytest.approx(0.01 * 80**-0.25, rel=0.15)
    assert prediction.batch_interval.low < prediction.batch_size < prediction.batch_interval.high


def test_the_optimum_is_a_local_fit_not_the_luckiest_trial():
    """One trial far from the planted optimum with a lucky draw does not move it."""
    trials = planted(noise=0.0)
    lucky = trials[0]
    horizons = [{**h, "value": h["value"] + 0.5} for h in lucky.user_attrs["horizons"]]
    study = optuna.create_study(direction="maximize")
    study.add_trials([*trials[1:], create_trial(state=TrialState.COMPLETE, value=1.4, params=lucky.params,
                                                distributions=lucky.distributions,
                                                user_attrs={**lucky.user_attrs, "horizons": horizons})])
    front = frontier(study.trials, True)
    assert front.batch_law.slope == pytest.approx(0.5, rel=0.2)


@pytest.mark.parametrize("maximize", [True, False])
def test_a_level_whose_optimum_is_noisy_weighs_less_in_the_laws(maximize):
    """The shortest horizon's values are 25 times noisier (as a run far from converged, where one
    trial's luck moves its optimum): weighted by each level's bootstrap spread, the laws still
    recover the planted exponents within 10%, and the LR exponent's interval stays narrow enough to
    predict (weighted equally, the noisy level pulls the slopes and widens it past the refusal)."""
    trials = planted(seed=3, maximize=maximize, noise_at={LEVELS[0]: 0.05})
    front = frontier(trials, maximize)
    assert front.batch_law.slope == pytest.approx(0.5, rel=0.1)
    assert front.lr_law.slope == pytest.approx(-0.25, rel=0.1)
    prediction = predict(front, 8e5)
    assert prediction.lr == pytest.approx(0.01 * 80**-0.25, rel=0.15)


def test_a_levels_optimum_claims_no_more_than_its_best_trial_measured():
    """The quadratic surface's stationary value is an extrapolation when it beats every trial: the
    level's value is then its best trial's (the metric law is fitted on measured values)."""
    trials = planted(noise=0.0)
    front = frontier(trials, True)
    for optimum in front.optima:
        measured = max(h["value"] for t in trials for h in t.user_attrs["horizons"] if h["length"] == optimum.compute)
        assert optimum.value <= measured


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"levels": LEVELS[:2]}, "2 horizons with at least 6 finished trials each; the laws need 3"),
    ({"sizes": [32, 64]}, "the trials tried 2 batch sizes; the batch-size law needs 3"),
    ({"n": 14, "noise": 0.05}, "exponent is too uncertain to extrapolate"),
])
def test_what_the_fits_cannot_carry_is_refused_with_the_reason(kwargs, words):
    with pytest.raises(Refusal, match=words):
        predict(frontier(planted(**kwargs), True), 8e5)


def test_a_target_past_the_reach_is_refused():
    front = frontier(planted(), True)
    with pytest.raises(Refusal, match="past the reach"):
        predict(front, (MAX_REACH + 1) * LEVELS[-1])


DIGITS = {
    "study": {"name": "pred", "metric": "val_accuracy", "direction": "maximize", "n_trials": 20, "seed": 1},
    "sampler": {"name": "grid", "grid_points": 5},
    "pruner": {"name": "none"},
    "objective": {"task": "digits_mlp", "optimizer": "sgd"},
    "budget": {"unit": "examples", "per_trial": 8000, "eval_every": 500, "horizons": ["0.125x", "0.25x", "0.5x"]},
    "search": {"batch_size": [16, 32, 64, 128], "base_lr": {"low": 0.01, "high": 0.5, "log": True}},
}


def test_a_study_without_horizons_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "plain.yaml"
    data = {**DIGITS, "budget": {"unit": "examples", "per_trial": 2000, "eval_every": 500},
            "study": {**DIGITS["study"], "n_trials": 1}}
    path.write_text(yaml.safe_dump(data))
    from sweeps.run import main as run_main

    assert run_main([str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main([str(path), "--budget", "10x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no budget.horizons" in err


def test_digits_sweep_predict_export_and_verify(tmp_path, capsys):
    path = tmp_path / "pred.yaml"
    path.write_text(yaml.safe_dump(DIGITS))
    from sweeps.run import main as run_main

    assert run_main([str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main([str(path), "--budget", "200x"]) == 2  # past the reach
    assert "past the reach" in capsys.readouterr().err
    export = tmp_path / "big.yaml"
    assert main([str(path), "--budget", "2x", "--export", str(export), "--verify", "--seeds", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "prediction at 16000 examples (2x the largest horizon trained)" in out
    assert "measured" in out and "over 2 seeds" in out
    config = load_config(export)
    assert config.budget.per_trial == 16000 and config.budget.horizons is None
    assert config.schedule.warmup_updates is not None and config.study.n_trials == 1
    study = optuna.load_study(study_name="pred", storage=f"sqlite:///{tmp_path}/pred.db")
    companion = optuna.load_study(study_name=study.user_attrs[PREDICT_STUDY_ATTR], storage=f"sqlite:///{tmp_path}/pred.db")
    stored = companion.user_attrs[PREDICTION_ATTR]
    runs = companion.get_trials(states=(TrialState.COMPLETE,))
    assert len(runs) == 2
    for run in runs:
        record = TrialRecord.of(run)
        assert (record.predicts_arm, record.batch_size) == ("predicted", stored["batch_size"])
        assert 16000 - record.batch_size < record.examples_seen <= 16000
        assert stored["batch_size"] & (stored["batch_size"] - 1) == 0  # the search's sizes are powers of two
        assert record.lr == pytest.approx(stored["lr"])
    assert len({TrialRecord.of(r).seed for r in runs}) == 2
    # a rerun resumes: nothing more is trained
    assert main([str(path), "--budget", "2x", "--verify", "--seeds", "2", "--quiet"]) == 0
    assert len(companion.get_trials()) == 2
    capsys.readouterr()
    from sweeps.report import main as report_main

    assert report_main([str(path), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "laws: batch size ~ examples^" in out
    assert "the prediction of `sweeps predict --verify`, trained:" in out and "over 2 seeds" in out
