"""The search-efficiency benchmark's compute-to-target accounting, on tiny cases."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "search_efficiency.py"
spec = importlib.util.spec_from_file_location("search_efficiency", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up
spec.loader.exec_module(bench)

Ev, Tr = bench.Evaluation, bench.TrialRecord


def trials():
    return [
        Tr(100, [Ev(50, 0.5, 1.0), Ev(80, 0.7, 2.0)]),  # trained on past its last evaluation: all 100 count
        Tr(40, [Ev(40, 0.9, 3.0)]),  # e.g. pruned after 40 examples
        Tr(100, [Ev(60, 0.99, 4.5), Ev(20, 0.95, 4.0)]),  # evaluations are taken in example order
    ]


def test_examples_to_target_count_earlier_trials_in_full_and_the_hitting_trial_up_to_its_evaluation():
    hit = bench.compute_to_target(trials(), target=0.9, total=1000)
    assert (hit.examples, hit.seconds, hit.best) == (140, 3.0, 0.99)  # best: within the total
    hit = bench.compute_to_target(trials(), target=0.95, total=1000)
    assert (hit.examples, hit.seconds) == (160, 4.0)
    assert bench.compute_to_target(trials(), target=0.5, total=1000).examples == 50


def test_compute_beyond_the_total_does_not_count():
    assert bench.compute_to_target(trials(), target=0.95, total=160).examples == 160
    hit = bench.compute_to_target(trials(), target=0.95, total=159)
    assert not hit.reached and hit.examples == math.inf and hit.best == 0.9
    assert not bench.compute_to_target(trials(), target=0.9, total=100).reached


def test_minimize():
    records = [Tr(10, [Ev(10, 3.0, 1.0)]), Tr(10, [Ev(5, 1.0, 2.0)])]
    assert bench.compute_to_target(records, target=1.5, total=100, maximize=False).examples == 15


def test_censored_median_and_speedup_use_the_whole_budget_for_misses():
    assert bench.censored_median([10.0, math.inf, math.inf], total=50) == 50
    assert bench.censored_median([10.0, 20.0, math.inf], total=50) == 20


def tiny(full_trials: int = 2) -> object:
    return bench.TaskSpec("digits_mlp", 1438, epochs=1, full_trials=full_trials)


def test_plain_loop_counts_every_example_it_trains_on():
    records, _ = bench.plain_sweep(tiny(), seed=0, method="random")
    # one epoch per trial (epochs searched in 1..1); it stops once the total is used
    assert [r.examples for r in records] == [1438, 1438]
    assert [[e.examples for e in r.evaluations] for r in records] == [[1438], [1438]]
    hit = bench.compute_to_target(records, target=-math.inf, total=tiny().total)
    assert hit.examples == 1438
    hit = bench.compute_to_target(records, target=2.0, total=tiny().total)
    assert not hit.reached and 0 < hit.best <= 1


def test_service_records_come_from_the_trials_examples_seen_and_curves():
    records, wall = bench.service_sweep(tiny(), seed=0)
    assert sum(r.examples for r in records) >= tiny().total
    for record in records:
        steps = [e.examples for e in record.evaluations]
        assert steps == sorted(steps) and steps[-1] <= record.examples <= 1438
        times = [e.seconds for e in record.evaluations]
        assert times == sorted(times) and 0 <= times[0] <= wall
    first = records[0].evaluations[0]
    hit = bench.compute_to_target(records, target=-math.inf, total=tiny().total)
    assert hit.examples == first.examples == 143  # eval_every defaults to a tenth of the budget
    # each trial counts its own examples from zero, on the same grid as the first
    assert records[1].evaluations[0].examples == first.examples
    target = max(e.value for e in records[0].evaluations) + 1e-6
    later = [(i, e) for i, r in enumerate(records[1:], 1) for e in r.evaluations if e.value >= target]
    assert later, "with seed 0 a later trial beats the first; the check below needs one"
    i, ev = later[0]  # everything of the trials before the hitting one counts
    expected = sum(r.examples for r in records[:i]) + ev.examples
    assert bench.compute_to_target(records, target, total=10**9).examples == expected


@pytest.mark.parametrize("values,expected", [([1.0, 2.0, 3.0, 4.0, 5.0], "2-4"), ([1.0], "-")])
def test_spread_is_the_interquartile_range(values, expected):
    assert bench.spread(values) == expected
