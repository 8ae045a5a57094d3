"""The search-efficiency benchmark's compute-to-target accounting, on tiny cases."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.search_efficiency_lib import analysis, grid, methods, records, reference, tasks, training

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "search_efficiency.py"

Ev, Tr = records.Evaluation, records.TrialRecord


def trials():
    return [
        Tr(100, [Ev(50, 0.5, 1.0), Ev(80, 0.7, 2.0)]),  # trained on past its last evaluation: all 100 count
        Tr(40, [Ev(40, 0.9, 3.0)]),  # e.g. pruned after 40 examples
        Tr(100, [Ev(60, 0.99, 4.5), Ev(20, 0.95, 4.0)]),  # evaluations are taken in example order
    ]


def test_examples_to_target_count_earlier_trials_in_full_and_the_hitting_trial_up_to_its_evaluation():
    hit = analysis.compute_to_target(trials(), target=0.9, total=1000)
    assert (hit.examples, hit.seconds, hit.best) == (140, 3.0, 0.99)  # best: within the total
    hit = analysis.compute_to_target(trials(), target=0.95, total=1000)
    assert (hit.examples, hit.seconds) == (160, 4.0)
    assert analysis.compute_to_target(trials(), target=0.5, total=1000).examples == 50


def test_compute_beyond_the_total_does_not_count():
    assert analysis.compute_to_target(trials(), target=0.95, total=160).examples == 160
    hit = analysis.compute_to_target(trials(), target=0.95, total=159)
    assert not hit.reached and hit.examples == math.inf and hit.best == 0.9
    assert not analysis.compute_to_target(trials(), target=0.9, total=100).reached


def test_minimize():
    records = [Tr(10, [Ev(10, 3.0, 1.0)]), Tr(10, [Ev(5, 1.0, 2.0)])]
    assert analysis.compute_to_target(records, target=1.5, total=100, maximize=False).examples == 15


def test_censored_median_and_speedup_use_the_whole_budget_for_misses():
    assert analysis.censored_median([10.0, math.inf, math.inf], total=50) == 50
    assert analysis.censored_median([10.0, 20.0, math.inf], total=50) == 20


def tiny(full_trials: int = 2) -> object:
    return tasks.TaskSpec("digits_mlp", 1438, epochs=1, full_trials=full_trials)


def test_plain_loop_counts_every_example_it_trains_on():
    records, _ = methods.plain_sweep(tiny(), seed=0, method="random")
    # one epoch per trial (epochs searched in 1..1); it stops once the total is used
    assert [r.examples for r in records] == [1438, 1438]
    assert [[e.examples for e in r.evaluations] for r in records] == [[1438], [1438]]
    hit = analysis.compute_to_target(records, target=-math.inf, total=tiny().total)
    assert hit.examples == 1438
    hit = analysis.compute_to_target(records, target=2.0, total=tiny().total)
    assert not hit.reached and 0 < hit.best <= 1


def test_service_records_come_from_the_trials_examples_seen_and_curves():
    records, wall = methods.service_sweep(tiny(), seed=0)
    assert sum(r.examples for r in records) >= tiny().total
    for record in records:
        steps = [e.examples for e in record.evaluations]
        assert steps == sorted(steps) and steps[-1] <= record.examples <= 1438
        times = [e.seconds for e in record.evaluations]
        assert times == sorted(times) and 0 <= times[0] <= wall
    first = records[0].evaluations[0]
    hit = analysis.compute_to_target(records, target=-math.inf, total=tiny().total)
    assert hit.examples == first.examples == 143  # eval_every defaults to a tenth of the budget
    # each trial counts its own examples from zero, on the same grid as the first
    assert records[1].evaluations[0].examples == first.examples
    target = max(e.value for e in records[0].evaluations) + 1e-6
    later = [(i, e) for i, r in enumerate(records[1:], 1) for e in r.evaluations if e.value >= target]
    assert later, "with seed 0 a later trial beats the first; the check below needs one"
    i, ev = later[0]  # everything of the trials before the hitting one counts
    expected = sum(r.examples for r in records[:i]) + ev.examples
    assert analysis.compute_to_target(records, target, total=10**9).examples == expected


@pytest.mark.parametrize("values,expected", [([1.0, 2.0, 3.0, 4.0, 5.0], "2-4"), ([1.0], "-")])
def test_spread_is_the_interquartile_range(values, expected):
    assert analysis.spread(values) == expected


@pytest.mark.parametrize("full,epochs", [(20, 20), (16, 20), (10, 4), (4, 20), (3, 3), (5, 1), (1, 2)])
def test_one_epoch_topk_plan_spends_exactly_the_total_compute(full, epochs):
    n, k = methods.topk_plan(tasks.TaskSpec("x", 100, epochs=epochs, full_trials=full))
    assert n + k * (epochs - 1) == full * epochs  # epochs of the training set: C exactly
    assert 1 <= k <= n


def test_one_epoch_topk_screens_one_epoch_each_then_finishes_the_best_from_where_they_stopped():
    spec = tasks.TaskSpec("digits_mlp", 1438, epochs=3, full_trials=3)
    n, k = methods.topk_plan(spec)
    assert (n, k) == (5, 2)
    picked = []
    records, _ = methods.one_epoch_topk_sweep(spec, seed=0, picked=picked)
    assert [r.examples for r in records] == [1438] * 5 + [2 * 1438] * 2
    assert sum(r.examples for r in records) == spec.total
    first = [r.evaluations[0].value for r in records[:5]]
    assert sorted(picked) == sorted(sorted(range(5), key=lambda i: -first[i])[:2])
    # a finished trial's record holds epochs 2..E, counted from its resumption
    assert [[e.examples for e in r.evaluations] for r in records[5:]] == [[1438, 2876]] * 2


def fake_runs(monkeypatch):
    calls = []

    def run_method(method, spec, seed, overrides=None):
        calls.append((spec.name, method, seed))
        return [Tr(10, [Ev(10, 0.5 + seed / 10, 1.0)])], 0.5

    monkeypatch.setattr(grid, "run_method", run_method)  # as the grid runner calls it
    return calls


def test_save_appends_each_run_and_a_rerun_skips_what_is_saved(tmp_path, monkeypatch):
    calls = fake_runs(monkeypatch)
    save = str(tmp_path / "runs.jsonl")
    specs = {"digits_mlp": tiny(2)}
    methods = {"random": None, "one_epoch_topk": None}
    quiet = lambda line: None  # noqa: E731
    grid.run_grid(specs, [0, 1], methods, {}, quiet, save)
    assert len(calls) == 4 and len(Path(save).read_text().splitlines()) == 4
    with open(save, "a") as f:  # a stop mid-write leaves a cut line: it is skipped, not fatal
        f.write('{"task": "digits_mlp", "meth')
    cells = grid.run_grid(specs, [0, 1, 2], methods, {}, quiet, save)
    assert calls[4:] == [("digits_mlp", "random", 2), ("digits_mlp", "one_epoch_topk", 2)]
    assert [wall for _, wall in cells[("digits_mlp", "random")].runs] == [0.5] * 3
    assert cells[("digits_mlp", "random")].runs[1][0][0].evaluations[0].value == 0.6  # read back
    grid.run_grid({"digits_mlp": tiny(3)}, [0], {"random": None}, {}, quiet, save)  # another compute level
    assert calls[-1] == ("digits_mlp", "random", 0) and len(calls) == 7
    loaded = grid.load_runs([save], {"digits_mlp": tasks.fingerprint(tiny(2))})
    assert len(loaded[("digits_mlp", "random")].runs) == 3 and len(loaded[("digits_mlp", "one_epoch_topk")].runs) == 3


def test_noise_is_measured_on_the_reference_configuration_and_gives_the_second_margin(tmp_path):
    path = tmp_path / "noise.json"
    ref = {"digits_mlp": {"best": 0.9, "best_params": {"batch_size": 256, "lr": 0.05}}}
    noise = reference.measure_noise({"digits_mlp": tiny(2)}, ref, seeds=3, path=path, log=lambda line: None)
    entry = noise["digits_mlp"]
    assert entry["config"] == {"batch_size": 256, "lr": 0.05, "epochs": 1, "warmup_fraction": 0.0}
    assert len(entry["final"]) == 3 and entry["std_final"] >= 0
    saved = json.loads(path.read_text())
    # the margin depends on the per-trial budget only: a run with another total compute uses it too
    assert reference.noise_margins(saved, {"digits_mlp": tiny(5)}) == {"digits_mlp": 2 * entry["std_final"]}
    other = tasks.TaskSpec("digits_mlp", 1438, epochs=2, full_trials=2)
    assert reference.noise_margins(saved, {"digits_mlp": other}) == {"digits_mlp": None}


def noise_entry(spec, bests, config=None):
    return {"config": dict(config or {"batch_size": 128, "lr": 0.05}, epochs=spec.epochs, warmup_fraction=0.0),
            "best": bests, "final": bests, "std_final": 0.01, "fingerprint": tasks.fingerprint(spec, total=False)}


def test_seed_mean_reference_is_the_mean_best_of_the_grid_configuration_over_the_noise_seeds():
    spec = tiny()
    ref_grid = {"digits_mlp": {"best": 0.99, "best_params": {"batch_size": 128, "lr": 0.05}}}
    noise = {"digits_mlp": noise_entry(spec, [0.96, 0.97, math.nan, 0.98])}
    ref = reference.resolve_reference(ref_grid, noise, {"digits_mlp": spec}, log=lambda line: None)
    assert ref["digits_mlp"]["best"] == pytest.approx(0.97) and ref["digits_mlp"]["seeds"] == 3
    assert ref["digits_mlp"]["grid_best"] == 0.99
    assert analysis.target_for(ref, "digits_mlp", spec, 0.01) == pytest.approx(0.96)
    # the old protocol, for the earlier runs: the grid maximum itself
    old = reference.resolve_reference(ref_grid, noise, {"digits_mlp": spec}, protocol="grid_max")
    assert analysis.target_for(old, "digits_mlp", spec, 0.01) == pytest.approx(0.98)
    assert reference.DEFAULT_REFERENCE == "seed_mean"


@pytest.mark.parametrize("noise_of", [
    lambda spec: {},  # not measured
    lambda spec: {"digits_mlp": noise_entry(spec, [0.96, 0.97], {"batch_size": 64, "lr": 0.05})},  # stale config
    lambda spec: {"digits_mlp": noise_entry(tasks.TaskSpec("digits_mlp", 1438, epochs=2, full_trials=2),
                                            [0.96, 0.97])},  # another per-trial level
])
def test_seed_mean_reference_is_left_out_rather_than_guessed(noise_of):
    spec = tiny()
    ref_grid = {"digits_mlp": {"best": 0.99, "best_params": {"batch_size": 128, "lr": 0.05}}}
    notes = []
    assert reference.resolve_reference(ref_grid, noise_of(spec), {"digits_mlp": spec}, log=notes.append) == {}
    assert notes and "grid_max" in notes[0]
    # the analysis then falls back to the best of the runs, marked as pooled, never the grid maximum
    cells = {("digits_mlp", "random"): analysis.Cell([(trials(), 1.0)])}
    pooled = analysis.with_pooled_best({}, cells, {"digits_mlp": tiny()})
    assert pooled["digits_mlp"] == {"best": 0.99, "pooled": True}


def test_cooldown_branches_count_as_compute_where_they_were_spent():
    # branches at steps below 35 only, each about in proportion to its step: 10, 20, 30 of 60
    assert methods.cooldown_shares([10, 20, 30, 40], branched_below=35) == [1 / 6, 3 / 6, 1.0, 1.0]
    assert methods.cooldown_shares([10, 20], branched_below=math.inf) == [1 / 3, 1.0]
    assert methods.cooldown_shares([40], branched_below=35) == [0.0]  # no branch: nothing to share


def test_a_service_variant_with_cooldown_branches_pays_for_them():
    spec = tiny()
    overrides = {"schedule": {"name": "wsd", "cooldown_evaluations": True}}
    records, _ = methods.service_sweep(spec, seed=0, overrides=overrides)
    plain, _ = methods.service_sweep(spec, seed=0, overrides={"schedule": {"name": "wsd"}})
    assert sum(r.examples for r in records) >= spec.total
    longest = max(records, key=lambda r: len(r.evaluations))
    first = longest.evaluations[0]
    assert first.examples > 143, "the first evaluation's branch is counted on top of its 143 examples"
    assert longest.examples > 1438, "a trial that trained its whole budget also pays for its branches"
    assert all(r.examples <= 1438 for r in plain)  # without branches a trial is its main run alone


def test_a_run_saved_in_two_files_is_read_once(tmp_path, monkeypatch, capsys):
    fake_runs(monkeypatch)
    first, second = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    quiet = lambda line: None  # noqa: E731
    grid.run_grid({"digits_mlp": tiny(2)}, [0, 1], {"random": None}, {}, quiet, first)
    grid.run_grid({"digits_mlp": tiny(2)}, [1, 2], {"random": None}, {}, quiet, second)
    cells = grid.load_runs([first, second])
    assert len(cells[("digits_mlp", "random")].runs) == 3  # seeds 0, 1, 2: seed 1 once
    assert "1 runs already read from an earlier file left out" in capsys.readouterr().err


def test_variants_are_rated_against_the_service_and_the_figure_is_drawn(tmp_path):
    spec = tasks.TaskSpec("digits_mlp", 100, epochs=1, full_trials=10)  # C = 1000 examples
    cell = lambda hit_at: analysis.Cell([([Tr(100, [Ev(hit_at, 0.9, 1.0)])], 1.0)] * 3)  # noqa: E731
    cells = {("digits_mlp", "service"): cell(20), ("digits_mlp", "pruner=none"): cell(60)}
    ref = {"digits_mlp": {"best": 0.9}}
    lines = []
    geo = analysis.speedups(cells, {"digits_mlp": spec}, ref, {"digits_mlp": 0.0}, log=lines.append,
                         against=["pruner=none"])
    assert geo == {"pruner=none": pytest.approx(3.0)} and "digits_mlp 60/20 = 3.00" in lines[0]
    out = str(tmp_path / "fig_held_out.png")
    analysis.draw_figure(cells, {"digits_mlp": spec}, ref, ["service", "pruner=none"],
                      [("margin 0.01", {"digits_mlp": 0.01})], out, "held-out tasks", "service")
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(out).stat().st_size > 10_000
    assert analysis.figure_path("docs/x.png", "held-out") == "docs/x_held_out.png"


def test_wsd_baselines_train_the_plain_loop_with_the_services_schedule(monkeypatch):
    run = training.PlainTrainer(tiny(), 0.0, "wsd").start(seed=0, batch_size=64, lr=0.1, epochs=4, warmup_fraction=0.0)
    lrs = [run.schedule.lr_at(u) for u in range(run.planned)]
    decay = run.planned - run.schedule.decay_start
    assert decay == round(0.2 * run.planned) and lrs[: run.planned - decay] == [0.1] * (run.planned - decay)
    assert lrs[-1] == 0.0 and training.PlainTrainer(tiny(), 0.0).start(0, 64, 0.1, 4, 0.0).schedule is None
    seen = []
    monkeypatch.setattr(methods, "plain_sweep", lambda spec, seed, method, shape: seen.append((method, shape)))
    monkeypatch.setattr(methods, "one_epoch_topk_sweep", lambda spec, seed, shape: seen.append(("topk", shape)))
    for method in ("random+wsd", "plain_optuna", "optuna_hyperband+wsd", "one_epoch_topk+wsd"):
        methods.run_method(method, tiny(), 0)
    assert seen == [("random", "wsd"), ("tpe", "cosine"), ("hyperband", "wsd"), ("topk", "wsd")]


def test_the_documented_command_line_runs_the_script_by_its_path(tmp_path):
    # the thin entry point finds its package beside it, from any working directory
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--estimate"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "# estimate: 20 runs, 0 already saved" in done.stdout
    help_text = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=120).stdout
    assert help_text.splitlines()[0].startswith("usage: search_efficiency.py")
    assert "Search efficiency: compute to target for random search" in help_text


def test_every_method_is_one_function_by_name_in_the_grids_order():
    # the order is the grid's and the tables' (and a --save file's), fixed before any change
    assert methods.METHODS == ("random", "plain_optuna", "optuna_hyperband", "one_epoch_topk", "service")
    assert methods.BASELINES == methods.METHODS[:-1]
    assert methods.WSD_BASELINES == tuple(f"{m}+wsd" for m in methods.BASELINES)
    assert all(callable(methods.SEARCH_METHODS[m]) for m in methods.METHODS)


# --- issue 30: --protocol crn ----------------------------------------------------------------------

def crn_tiny(full_trials: int = 1, charge: float = 50.0) -> tasks.TaskSpec:
    return tasks.TaskSpec("digits_mlp", 1438, epochs=2, full_trials=full_trials, eval_charge=charge)


def test_common_random_numbers_give_every_methods_kth_trial_the_same_seed_and_configuration():
    spec = crn_tiny()
    runs = {name: methods.CRN_METHODS[name](spec, 3)[0] for name in ("crn_random", "crn_tpe_median", "crn_service")}
    keys = ("batch_size_log2", "base_lr", "warmup_fraction", "epochs", "seed")
    first = {name: records[0] for name, records in runs.items()}
    expected = dict(training.crn_config(spec, 3, 0), seed=training.crn_seed(3, 0))
    for name, record in first.items():
        assert {k: record.params[k] for k in keys} == expected, name
    assert training.crn_seed(3, 0) == training.trial_seed(3, 0)  # the service's own trial seed
    # the same seed and configuration train the same run: the service's curve is the baselines', to the bit
    curves = {name: [(e.examples, e.value) for e in record.evaluations] for name, record in first.items()}
    assert curves["crn_random"] == curves["crn_tpe_median"] == curves["crn_service"]
    assert training.crn_config(spec, 3, 1) != training.crn_config(spec, 3, 0) != training.crn_config(spec, 4, 0)


def test_evaluation_is_charged_as_compute():
    spec = crn_tiny(full_trials=2, charge=50.0)
    # every 287 examples (2876 / 10, floored): 10 on the grid and one at the end, off it
    assert spec.evaluations_per_trial == 11 and spec.total == 2 * (2876 + 11 * 50.0)
    record = Tr(100, [Ev(60, 0.9, 1.0), Ev(30, 0.5, 0.5)], params={"x": 1})
    (charged,) = records.charged([record], 10.0)
    assert [(e.examples, e.value) for e in charged.evaluations] == [(40, 0.5), (80, 0.9)]  # its own included
    assert charged.examples == 120 and charged.params == {"x": 1} and record.examples == 100
    later = Tr(50, [Ev(50, 0.95, 2.0)])
    assert analysis.compute_to_target(records.charged([record, later], 10.0), 0.95, total=1000).examples == 180
    assert analysis.Cell([([record, later], 1.0)], charge=10.0).hits(0.95, 1000)[0].examples == 180
    # a method stops once its charged compute reaches C, and not before
    recs, _ = methods.CRN_METHODS["crn_random"](spec, 0)
    spent = [r.examples + len(r.evaluations) * spec.eval_charge for r in recs]
    assert sum(spent) >= spec.total > sum(spent[:-1])


def needs_bench(*modules: str) -> None:
    """The model-based baselines' packages (the `bench` extra, which the README's test command
    installs): skipped without them, except under CI=true, where they fail."""
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            if os.environ.get("CI", "").lower() in ("true", "1"):
                pytest.fail(f"{module} is missing on CI: the test command installs the bench extra")
            pytest.skip(f"no {module} here: pip install -e '.[bench]'")


def test_the_evaluation_charge_is_measured_against_a_training_example():
    entry = training.measure_eval_charge(tiny(), repeats=2, updates=10)
    assert entry["n_val"] == 359 and entry["ratio"] > 0
    assert entry["per_evaluation"] == pytest.approx(entry["ratio"] * 359, rel=0.01)
    saved = json.loads((REPO / "benchmarks" / "search_efficiency_charge.json").read_text())
    spec_names = set(tasks.HELD_OUT_30) | set(tasks.DEVELOPMENT)
    assert spec_names <= set(saved) and all(saved[n]["per_evaluation"] > 0 for n in spec_names)


@pytest.mark.parametrize("name", [m for m in methods.CRN_METHODS if m != "crn_service"])
def test_each_crn_baseline_spends_the_total_compute_on_the_recipe(name):
    if name in ("crn_dehb", "crn_bohb"):
        needs_bench("ConfigSpace", {"crn_dehb": "dehb", "crn_bohb": "hpbandster"}[name])
    spec = crn_tiny(full_trials=2)
    recs, wall = methods.run_method(name, spec, 1)
    spent = [r.examples + len(r.evaluations) * spec.eval_charge for r in recs]
    assert sum(spent) >= spec.total or name == "crn_topk"  # top-K stops at its plan, a little under C
    assert sum(spent[:-1]) < spec.total and wall > 0
    every = training.eval_every(spec)
    for record in recs:
        assert record.params is not None and record.started is not None
        assert all(e.examples % every == 0 or e.examples == record.params.get("length") or e.examples <= 1438
                   for e in record.evaluations)
    seeds = [r.params["seed"] for r in recs if not r.params.get("resumed")]
    assert seeds == [training.crn_seed(1, k) for k in range(len(seeds))]  # trial k under crn_seed(seed, k)


def test_one_epoch_topk_on_the_grid_screens_about_one_epoch_and_finishes_about_half():
    assert methods.topk30_plan(tasks.TaskSpec("x", 100, epochs=1, full_trials=4)) == (4, 0, 10)
    for epochs, full in ((3, 20), (12, 20), (2, 4), (20, 20)):
        n, k, s = methods.topk30_plan(tasks.TaskSpec("x", 100, epochs=epochs, full_trials=full))
        assert 1 <= s <= 9 and 1 <= k <= n and n * s + k * (10 - s) <= 10 * full
        assert 10 * full - (n * s + k * (10 - s)) < s  # what is left unplanned is under one screening


def test_the_protocols_figures():
    pairs = [(10.0, 20.0), (30.0, 30.0), (math.inf, 40.0), (math.inf, math.inf)]
    assert analysis.p_faster(pairs) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert analysis.median_ratio([(10.0, 20.0), (20.0, math.inf), (30.0, 60.0)], total=100) == 60 / 20
    point, low, high = analysis.bootstrap_ratio([([(10.0, 20.0), (12.0, 30.0), (9.0, 18.0)], 100.0)],
                                                analysis.random.Random(0), n=200)
    assert low <= point <= high and point == pytest.approx(20 / 10)
    assert analysis.share_reached([10.0, 50.0, math.inf], 100.0, (0.25, 1.0)) == [1 / 3, 2 / 3]
    ranks = analysis.mean_ranks({"a": {"s": 1.0, "b": 2.0, "c": 2.0}, "b": {"s": 3.0, "b": 1.0, "c": 2.0}})
    assert ranks == {"s": 2.0, "b": 1.75, "c": 2.25}


def test_reference_entries_written_by_two_processes_keep_each_others_tasks(tmp_path):
    import multiprocessing

    path = tmp_path / "reference.json"
    reference.write_entry(path, "a", {"best": 1.0})
    with multiprocessing.get_context("fork").Pool(2) as pool:  # two writers at once, other tasks each
        pool.starmap(reference.write_entry, [(path, f"t{i}", {"best": float(i)}) for i in range(8)])
    entries = json.loads(path.read_text())
    assert entries == {"a": {"best": 1.0}, **{f"t{i}": {"best": float(i)} for i in range(8)}}


def test_the_best_baseline_per_task_is_the_lowest_censored_median_paired_with_the_service():
    spec = tasks.TaskSpec("t", 10, epochs=1, full_trials=10)  # C = 100 examples
    def cell(costs):  # one trial per seed reaching value 1.0 after `cost` examples (inf: never)
        out = analysis.Cell()
        for seed, cost in enumerate(costs):
            out.runs.append(([Tr(100, [Ev(cost if cost < 100 else 100, 1.0 if cost < 100 else 0.0, 1.0)])], 1.0))
            out.seeds.append(seed)
        return out
    cells = {("t", "svc"): cell([10, 20, 30]), ("t", "a"): cell([40, 50, 60]), ("t", "b"): cell([20, 30, 40]),
             ("t", "c"): cell([math.inf, math.inf, math.inf])}
    got = analysis.best_baseline_ratio(cells, {"t": spec}, {"t": {"best": 1.0}}, {"t": 0.0}, "svc", ["a", "b", "c"],
                                       analysis.random.Random(0))
    best_of, (point, low, high) = got
    assert best_of == {"t": "b"} and point == pytest.approx(30 / 20) and low <= point <= high
    assert analysis.best_baseline_ratio(cells, {"t": spec}, {"t": {"best": 1.0}}, {"t": 0.0}, "none", ["a"],
                                        analysis.random.Random(0)) is None


def test_crn_runs_save_their_trials_and_a_rerun_resumes(tmp_path, monkeypatch):
    calls = []

    def run_method(method, spec, seed, overrides=None):
        calls.append((method, seed))
        return [Tr(10, [Ev(10, 0.5 + seed / 10, 1.0)], params={"trial": 0, "seed": seed}, started=0.5, ended=1.0)], 0.5

    monkeypatch.setattr(grid, "run_method", run_method)
    save, quiet = str(tmp_path / "crn.jsonl"), (lambda line: None)
    spec = crn_tiny(2, charge=5.0)
    labels = {"crn_random": None, "crn_service": None}
    grid.run_grid({"digits_mlp": spec}, [0, 1], labels, {}, quiet, save, shard=(0, 2))
    assert calls == [("crn_random", 0), ("crn_service", 0)]  # runs 0 and 2 of 4: this shard's
    grid.run_grid({"digits_mlp": spec}, [0, 1], labels, {}, quiet, save)
    assert calls[2:] == [("crn_random", 1), ("crn_service", 1)]  # the rest; the saved ones read back
    cells = grid.load_runs([save], {"digits_mlp": tasks.fingerprint(spec)})
    cell = cells[("digits_mlp", "crn_service")]
    assert cell.charge == 5.0 and cell.seeds == [0, 1]
    record = cell.runs[1][0][0]
    assert (record.params, record.started, record.ended) == ({"trial": 0, "seed": 1}, 0.5, 1.0)
    assert cell.hits(0.6, spec.total)[1].examples == 15  # 10 examples and one evaluation's charge
    assert tasks.fingerprint(crn_tiny(2, charge=6.0)) != tasks.fingerprint(spec)  # another charge, another C


def test_the_held_out_tasks_of_issue_30():
    specs = {name: tasks.ISSUE30_TASKS.get(name) for name in tasks.HELD_OUT_30}
    families = {s.family for s in specs.values() if s} | {v["family"] for v in tasks.ISSUE30_CHAR_LM.values()}
    adamw = [n for n, s in specs.items() if s and s.optimizer == "adamw"]
    adamw += [n for n, v in tasks.ISSUE30_CHAR_LM.items() if v.get("optimizer") == "adamw"]
    assert len(tasks.HELD_OUT_30) >= 6 and len(families) >= 3 and len(adamw) >= 2
    assert any(s and s.task == tasks.STREAM_FACTORY for s in specs.values())
    assert not set(tasks.HELD_OUT_30) & set(tasks.DEVELOPMENT)
    timings = json.loads((REPO / "benchmarks" / "search_efficiency_timings.json").read_text())
    assert set(tasks.HELD_OUT_30) <= set(timings)


def test_the_streamed_task_reads_a_dataset_from_disk(tmp_path, monkeypatch):
    from benchmarks.search_efficiency_lib import stream_task

    monkeypatch.setattr(stream_task, "FOLDER", tmp_path)
    settings = training.TrialSettings(batch_size=8, lr=0.01, seed=0, device=training.torch.device("cpu"),
                                      options={"n_train": 64, "n_val": 32, "dim": 4, "classes": 3})
    task = stream_task.teacher_stream(settings)
    assert isinstance(task.train, stream_task.MemmapPairs) and len(task.train) == 64 and len(task.val) == 32
    assert len(list(tmp_path.glob("*.npy"))) == 4
    x, y = training.batch_of(task.train, training.torch.tensor([3, 1]))
    assert x.shape == (2, 4) and y.shape == (2,)


def test_with_horizons_the_baselines_report_at_the_services_horizons():
    spec = dataclasses.replace(crn_tiny(), horizons=(719.0, 1438.0, 2876.0))
    assert spec.evaluations_per_trial == 3 and tasks.fingerprint(spec) != tasks.fingerprint(crn_tiny())
    run = training.RecipeRun(spec, 0, 64, 0.05, 0.0)
    methods.finish(run)
    assert [e.examples for e in run.record.evaluations] == [719, 1438, 2876]


def test_a_task_streamed_from_disk_trains_the_same_run_in_the_service_and_the_baselines(tmp_path, monkeypatch):
    from benchmarks.search_efficiency_lib import stream_task

    monkeypatch.setattr(stream_task, "FOLDER", tmp_path)
    base = tasks.ISSUE30_TASKS["mlp_stream_adamw"]
    spec = dataclasses.replace(base, name="stream_tiny", n_train=256, epochs=2, full_trials=1, eval_charge=10.0,
                               options=dict(base.options, n_train=256, n_val=128, data_seed=99))
    curves = []
    for name in ("crn_random", "crn_service"):
        records, _ = methods.CRN_METHODS[name](spec, 0)
        curves.append([(e.examples, e.value) for e in records[0].evaluations])
    assert curves[0] == curves[1] and len(curves[0]) >= 5


def test_a_service_that_starts_its_model_sooner_keeps_its_own_start_up_count():
    spec = crn_tiny()
    config = lambda overrides: methods.parse_config(methods.service_study(spec, 0, overrides), ".")  # noqa: E731
    assert methods.start_up_of(config(None)) == training.START_UP == 10
    assert methods.start_up_of(config({"sampler": {"n_startup_trials": 4}})) == 4


def test_the_share_of_seeds_at_target_is_drawn(tmp_path):
    spec = dataclasses.replace(crn_tiny(10, charge=5.0))
    cell = lambda at: analysis.Cell([([Tr(100, [Ev(at, 0.9, 1.0)])], 1.0)] * 3, charge=5.0, seeds=[0, 1, 2])  # noqa: E731
    cells = {("digits_mlp", "crn_service"): cell(20), ("digits_mlp", "crn_random"): cell(60)}
    out = str(tmp_path / "share.png")
    analysis.draw_share_figure(cells, {"digits_mlp": spec}, {"digits_mlp": {"best": 0.9}},
                               ["crn_random", "crn_service"], [("margin 0.01", {"digits_mlp": 0.01})], out,
                               "development", "crn_service")
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dehbs_population_starts_from_the_shared_draws(tmp_path):
    needs_bench("ConfigSpace", "dehb")
    from dehb import DEHB

    from benchmarks.search_efficiency_lib import multifidelity

    spec = crn_tiny()
    cs = multifidelity.config_space(spec, 0)
    dehb = DEHB(cs=cs, dimensions=3, min_fidelity=10 / 9, max_fidelity=10, eta=3, n_workers=1,
                output_path=str(tmp_path), seed=0, log_level="ERROR", save_freq=None)
    multifidelity.seed_population(dehb, cs, spec, 0)
    first = dict(dehb.vector_to_configspace(dehb.de[min(dehb.de)].population[0]))
    expected = training.crn_config(spec, 0, 0)
    assert first["batch_size_log2"] == expected["batch_size_log2"]
    assert first["base_lr"] == pytest.approx(expected["base_lr"]) and first["warmup_fraction"] == pytest.approx(
        expected["warmup_fraction"])


def test_commit_runs_commits_the_save_file_after_each_run(tmp_path, monkeypatch):
    fake_runs(monkeypatch)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "other.txt").write_text("not committed")
    save = str(tmp_path / "runs.jsonl")
    grid.run_grid({"digits_mlp": tiny(2)}, [0, 1], {"crn_random": None}, {}, lambda line: None, save, commit=True)
    log = subprocess.run(["git", "log", "--format=%s"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert log.splitlines() == [f"search_efficiency grid: digits_mlp crn_random seed {s} (runs.jsonl)" for s in (1, 0)]
    tracked = subprocess.run(["git", "ls-files"], cwd=tmp_path, capture_output=True, text=True).stdout.split()
    assert tracked == ["runs.jsonl"]


def test_a_service_with_horizons_is_charged_for_its_branches_and_all_its_evaluations():
    spec = dataclasses.replace(crn_tiny(2), horizons=(719.0, 1438.0, 2876.0))
    recs, _ = methods.service_sweep(spec, 0, {"budget": {"horizons": ["0.25x", "0.5x"]}}, crn=True)
    first = recs[0]  # crn_config(0, 0) at batch 16 trains to its end
    assert first.examples > 2876, "its horizons' branches count as compute"
    assert first.evaluations_made > len(first.evaluations) == 3  # the run's grid and the branches evaluate too
    made = [e.made for e in first.evaluations]
    assert made == sorted(made) and made[-1] == first.evaluations_made
    steps = [e.examples for e in first.evaluations]
    assert steps == sorted(steps) and steps[-1] == first.examples
    baseline, _ = methods.random30(spec, 0)  # the same configuration and seed: the same run to its end
    assert [e.examples for e in baseline[0].evaluations] == [719, 1438, 2876]
    assert baseline[0].evaluations[-1].value == first.evaluations[-1].value
    charged = records.charged([first], 10.0)[0]
    assert charged.examples == first.examples + 10.0 * first.evaluations_made
    assert charged.evaluations[0].examples == first.evaluations[0].examples + 10.0 * made[0]


def test_a_start_up_draw_keeps_its_quantiles_inside_a_measured_prior():
    """`crn_within`: the base LR at the same log quantile of the prior's range, and under a batch
    cap (`cap_batch`) the batch exponent at the same quantile of the capped exponents."""
    from sweeps.search.prior import MeasuredPrior

    spec = tasks.TASKS["digits_mlp"]
    low, high = spec.lr_range
    drawn = {"batch_size_log2": 9, "base_lr": math.sqrt(low * high), "warmup_fraction": 0.1, "epochs": 3}
    prior = MeasuredPrior((16, 64), (0.1, 0.2), 10, 800, 0.5, "sqrt", 1e-3, 1e-1)
    uncapped = methods.crn_within(drawn, spec, prior)
    assert uncapped["base_lr"] == pytest.approx(1e-2) and uncapped["batch_size_log2"] == 9
    capped = dataclasses.replace(prior, noise_scales=(20.0, 40.0), batch_high=64)
    assert methods.crn_within(drawn, spec, capped)["batch_size_log2"] == 6  # the top of 4..9 to the top of 4..6
    assert methods.crn_within({**drawn, "batch_size_log2": 4}, spec, capped)["batch_size_log2"] == 4
    assert methods.crn_within({**drawn, "batch_size_log2": 7}, spec, capped)["batch_size_log2"] == 5  # 0.6 of 2
    assert methods.crn_within(drawn, spec, None) == drawn
