"""The horizons benchmark (benchmarks/horizons.py): its core on a tiny setting, and its analysis
(best values, pass/fail and the compute ratio) on hand-made input."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "horizons.py"
spec = importlib.util.spec_from_file_location("horizons_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up
spec.loader.exec_module(bench)

# 800 examples per trial on the digits (about half an epoch), horizons 100 / 200 / 400 / 800
TINY = bench.Setup("digits_mlp", per_trial=800, n_train=1438, eval_every=50,
                   search={"batch_size": {"low": 16, "high": 32, "log": True, "power_of_two": True},
                           "base_lr": {"low": 0.01, "high": 0.5, "log": True}})


def test_both_arms_run_on_a_tiny_setting_and_a_rerun_resumes_from_the_saved_file(tmp_path, monkeypatch):
    save = str(tmp_path / "runs.json")
    units = bench.run_all([TINY], [0], 2, save=save, log=lambda _: None)
    assert [(u["arm"], u["length"]) for u in units] == [("horizons", 800.0), *(("separate", h) for h in TINY.lengths)]
    assert all(len(u["trials"]) == 2 and u["total"] > 0 for u in units)
    horizons = units[0]
    # every trial of the horizons arm answered its finished horizons; its cost includes the branches
    assert all("100" in t["runs"] for t in horizons["trials"])
    analysis = bench.analyse(units, {"digits_mlp": TINY})
    assert [r.length for r in analysis.rows] == TINY.lengths
    assert all(r.complete and r.seeds == [0] for r in analysis.rows)
    assert not analysis.passed  # one seed: no seed SD, so no row can pass
    (compute,) = analysis.compute
    assert compute.ratio == horizons["total"] / sum(u["total"] for u in units[1:])
    # trial 0 tries the same configuration in every sweep (TPE's random startup): the same run
    pairs, equal = analysis.same_runs["pairs"], analysis.same_runs["equal"]
    assert pairs >= 4 and equal == pairs

    def no_training(*args, **kwargs):
        raise AssertionError("a saved sweep was trained again")

    monkeypatch.setattr(bench, "run_unit", no_training)
    assert bench.run_all([TINY], [0], 2, save=save, log=lambda _: None) == units


HAND = bench.Setup("hand", per_trial=800, n_train=100)


def unit(seed: int, arm: str, length: float, values: list[float | None], total: float) -> dict:
    """A sweep's summary as run_unit writes it: one trial per value, each a finished run of
    `length` (the horizons arm: of every horizon up to `length`, the value given for each)."""
    lengths = [h for h in HAND.lengths if h <= length] if arm == "horizons" else [length]
    trials = [{"number": i, "state": "COMPLETE", "params": {"x": i}, "consumed": total / max(len(values), 1),
               "stop_reason": "budget", "runs": {} if v is None else {f"{h:g}": v for h in lengths},
               "complete_value": v} for i, v in enumerate(values)]
    return {"task": "hand", "seed": seed, "arm": arm, "length": float(length), "n_trials": len(values),
            "setup": HAND.fingerprint(), "wall": 1.0, "total": total, "trials": trials}


def hand_units(horizon_best: dict[float, list[float]], separate_best: dict[float, list[float]]) -> list[dict]:
    """Seeds 0-2: the horizons sweep costs 1000 examples; the 4 separate sweeps 2000, 2500, 1500
    in all (ratio 3000 / 6000 = 0.5). Each sweep holds its best and a worse trial."""
    units = []
    separate_totals = [2000, 2500, 1500]
    for seed in range(3):
        # the horizons arm: one trial per horizon holding its best there, finished up to that horizon
        trials = []
        for h in HAND.lengths:
            trials.append({"number": len(trials), "state": "PRUNED", "params": {"h": h}, "consumed": 250.0,
                           "stop_reason": "pruned", "runs": {f"{h:g}": horizon_best[h][seed]},
                           "complete_value": None})
        trials.append({"number": len(trials), "state": "COMPLETE", "params": {}, "consumed": 0.0,
                       "stop_reason": "budget", "runs": {f"{h:g}": 0.1 for h in HAND.lengths},
                       "complete_value": 0.1})
        horizons = unit(seed, "horizons", 800, [], 1000.0)
        horizons["trials"] = trials
        units.append(horizons)
        for h in HAND.lengths:
            units.append(unit(seed, "separate", h, [separate_best[h][seed], 0.2, None], separate_totals[seed] / 4))
    return units


def test_the_analysis_passes_within_two_seed_sds_or_better_and_at_half_the_compute():
    separate = {100: [0.80, 0.82, 0.84], 200: [0.80, 0.82, 0.84], 400: [0.9, 0.9, 0.9], 800: [0.9, 0.9, 0.9]}
    horizons = {100: [0.77, 0.79, 0.81],  # 0.03 worse, SD 0.02: within 2 SD
                200: [0.74, 0.76, 0.78],  # 0.06 worse: beyond 2 SD
                400: [0.9, 0.9, 0.89],  # SD 0: any loss fails
                800: [0.95, 0.95, 0.95]}  # better: passes
    analysis = bench.analyse(hand_units(horizons, separate), {"hand": HAND})
    rows = {r.length: r for r in analysis.rows}
    assert rows[100].horizons == horizons[100] and rows[100].separate == separate[100]
    assert rows[100].sd == pytest.approx(0.02)
    assert rows[100].mean_diff == pytest.approx(-0.03)
    assert [rows[h].passed for h in HAND.lengths] == [True, False, False, True]
    lo, hi = rows[100].interval()
    assert lo == pytest.approx(-0.03) and hi == pytest.approx(-0.03)  # the same difference every seed
    (compute,) = analysis.compute
    assert compute.horizons == [1000.0] * 3 and compute.separate == [2000.0, 2500.0, 1500.0]
    assert compute.ratio == pytest.approx(0.5) and compute.passed  # at most half: passes at 0.5
    assert compute.per_seed == pytest.approx([0.5, 0.4, 1000 / 1500])
    assert not analysis.passed  # two rows fail
    # the study best (COMPLETE trials only) is kept apart from the run view
    assert rows[100].separate_complete == separate[100]

    better = {h: [v + 0.01 for v in separate[h]] for h in HAND.lengths}
    assert bench.analyse(hand_units(better, separate), {"hand": HAND}).passed

    worse_compute = hand_units(better, separate)
    for u in worse_compute:
        if u["arm"] == "horizons":
            u["total"] = 1001.0
    analysis = bench.analyse(worse_compute, {"hand": HAND})
    assert analysis.compute[0].ratio > 0.5 and not analysis.passed


def test_a_seed_with_a_missing_sweep_is_left_out_and_a_horizon_without_a_finished_run_fails():
    separate = {h: [0.80, 0.82, 0.84] for h in HAND.lengths}
    units = hand_units(separate, separate)
    units = [u for u in units if not (u["seed"] == 2 and u["arm"] == "separate" and u["length"] == 400)]
    analysis = bench.analyse(units, {"hand": HAND})
    assert all(r.seeds == [0, 1] for r in analysis.rows) and analysis.compute[0].seeds == [0, 1]
    assert analysis.passed
    for u in units:
        if u["arm"] == "horizons" and u["seed"] == 0:
            for t in u["trials"]:
                t["runs"].pop("100", None)
    analysis = bench.analyse(units, {"hand": HAND})
    row = analysis.rows[0]
    assert row.horizons[0] is None and not row.complete and not row.passed and not analysis.passed


def frozen(state: TrialState, updates: int, planned: int, reason: str, curve: dict[int, float]):
    return create_trial(state=state, value=max(curve.values()) if state == TrialState.COMPLETE else None,
                        params={"base_lr": 0.1}, distributions={"base_lr": FloatDistribution(0.01, 1.0)},
                        user_attrs={"updates": updates, "planned_updates": planned, "stop_reason": reason,
                                    "examples_seen": updates * 16},
                        intermediate_values=curve)


def test_a_separate_trial_counts_when_it_trained_its_whole_plan_even_if_stored_pruned():
    whole = bench.trial_summary(frozen(TrialState.PRUNED, 10, 10, "pruned", {50: 0.5, 100: 0.7}), 100, 1.0)
    assert whole["runs"] == {"100": 0.7} and whole["complete_value"] is None and whole["consumed"] == 160
    cut = bench.trial_summary(frozen(TrialState.PRUNED, 5, 10, "pruned", {50: 0.5}), 100, 1.0)
    assert cut["runs"] == {}
    done = bench.trial_summary(frozen(TrialState.COMPLETE, 10, 10, "budget", {50: 0.6, 100: 0.4}), 100, 1.0)
    assert done["runs"] == {"100": 0.6} and done["complete_value"] == 0.6
    diverged = bench.trial_summary(frozen(TrialState.PRUNED, 6, 10, "diverged", {50: 0.3, 100: math.nan}), 100, 1.0)
    assert diverged["runs"] == {"100": 0.3}
    assert optuna.trial.TrialState.PRUNED.name == whole["state"]
