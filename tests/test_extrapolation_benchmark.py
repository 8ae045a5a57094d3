"""The analysis of benchmarks/extrapolation.py (issue 25) on hand-made inputs: regret, rank, the
paired test, the verdict, and the --save file's resume."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "extrapolation.py"
spec = importlib.util.spec_from_file_location("extrapolation_benchmark", PATH)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up
spec.loader.exec_module(bench)


def test_regret_is_in_seed_sds_and_signed_by_direction():
    assert bench.regret(0.95, 0.93, 0.01, maximize=True) == pytest.approx(2.0)
    assert bench.regret(0.95, 0.96, 0.01, maximize=True) == pytest.approx(-1.0)  # beats the best cell
    assert bench.regret(0.25, 0.27, 0.01, maximize=False) == pytest.approx(2.0)  # a loss: larger is worse
    assert bench.regret(0.25, None, 0.01, maximize=False) == math.inf


def test_pooled_sd_is_the_root_mean_variance_of_full_groups():
    groups = [[1.0, 2.0, 3.0], [2.0, 2.0, 2.0], [5.0], [1.0, None, 2.0]]  # the last two are left out
    assert bench.pooled_sd(groups) == pytest.approx(math.sqrt((1.0 + 0.0) / 2))


def test_rank_counts_the_cells_strictly_better_and_a_missing_value_is_the_worst():
    cells = [0.90, 0.95, 0.97, None, 0.95]
    assert bench.rank(0.96, cells, maximize=True) == 2
    assert bench.rank(0.95, cells, maximize=True) == 2  # ties are not better
    assert bench.rank(None, cells, maximize=True) == 5
    assert bench.rank(0.3, [0.2, 0.4, None], maximize=False) == 2
    assert bench.in_top(5, 42) and not bench.in_top(6, 42)  # at most 4.2 of 42 cells better
    assert bench.mean([1.0, 2.0], True) == 1.5 and bench.mean([1.0, None], True) is None


def test_paired_test_is_one_sided_at_ten_percent():
    mean_d, p, worse = bench.paired_worse([0.90, 0.91, 0.92], [0.95, 0.955, 0.97], maximize=True)
    assert mean_d < 0 and p < 0.1 and worse
    _, p, worse = bench.paired_worse([0.95, 0.955, 0.97], [0.90, 0.91, 0.92], maximize=True)
    assert p > 0.9 and not worse
    _, p, worse = bench.paired_worse([0.90, 0.96, 0.93], [0.93, 0.92, 0.94], maximize=True)  # noise: not worse
    assert 0.1 < p < 0.9 and not worse
    _, _, worse = bench.paired_worse([0.3, 0.31, 0.32], [0.2, 0.21, 0.22], maximize=False)  # a loss, higher
    assert worse
    assert bench.paired_worse([0.9] * 3, [0.9] * 3, maximize=True)[2] is False  # identical runs
    assert bench.paired_worse([None, 0.9, 0.9], [0.9] * 3, maximize=True)[2] is True  # a run without a value


def test_nearest_cell_in_log_space():
    cells = [(b, lr) for b in (16, 64, 256) for lr in (0.001, 0.01, 0.1)]
    assert bench.nearest(100, 0.02, cells) == (64, 0.01)
    assert bench.nearest(200, 0.05, cells) == (256, 0.1)


def row(task, regret=0.5, rank=1, worse=False, ratio=0.18, refusal=None):
    return bench.Row(task, "development", refusal=refusal, regret=regret, rank=rank, n_cells=42, worse=worse,
                     ratio=ratio)


def test_verdict_needs_three_hits_no_worse_and_cheap_sweeps():
    rows = [row("a"), row("b", regret=1.9, rank=5), row("c"), row("d", regret=3.0)]
    assert [met for _, met, _ in bench.verdict(rows)] == [True, True, True]
    rows = [row("a"), row("b", rank=6), row("c", refusal="too uncertain"), row("d", worse=True, ratio=0.25)]
    met = [m for _, m, _ in bench.verdict(rows)]
    assert met == [False, False, False]
    assert "c, d" in bench.verdict(rows)[1][2]
    assert [m for _, m, _ in bench.verdict(rows[:3] + [row("d")])][0] is False  # two hits of four
    assert [m for _, m, _ in bench.verdict([row("a"), row("b"), row("c")])][0] is False  # a task missing
    six = [row("a"), row("b"), row("c"), row("d"), row("e"), row("f", regret=3.0)]  # protocol v2: 3/4 is 5 of 6
    assert [m for _, m, _ in bench.verdict(six, n_tasks=6)][0] is True
    assert [m for _, m, _ in bench.verdict(six[:4] + [row("e", rank=6), six[5]], n_tasks=6)][0] is False


def test_protocol_v2_holds_v1s_tasks_as_development_and_two_new_held_out():
    v1, v2 = bench.PROTOCOLS["v1"], bench.PROTOCOLS["v2"]
    assert [s.role for s in v1.values()] == ["development"] * 2 + ["held_out"] * 2
    assert {n: s.role for n, s in v2.items()} == {**{n: "development" for n in v1}, "digits_cnn": "held_out",
                                                  "lm_onepass": "held_out"}
    assert all((v2[n].task, v2[n].options, v2[n].c_max) == (s.task, s.options, s.c_max) for n, s in v1.items())


def test_saved_runs_are_kept_and_not_rerun(tmp_path):
    path = tmp_path / "runs.json"
    saved = bench.Saved(str(path))
    calls = []
    saved.get("t/grid/s0", lambda: calls.append(1) or {"value": 0.5})
    again = bench.Saved(str(path))
    assert again.get("t/grid/s0", lambda: calls.append(2) or {"value": 0.7})["value"] == 0.5
    assert calls == [1]
