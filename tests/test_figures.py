"""The report's figures on small synthetic studies: axis ranges, gaps, notes, colours, Pareto fronts.

Each check reads both renderings, the plotly spec (report.html, dashboard) and the matplotlib axes
(the PNGs), so the two cannot drift apart.
"""

from __future__ import annotations

import itertools
import math
import random

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeps.results.analysis import StudyAnalysis, analyse
from sweeps.results.figures import build_figures
from sweeps.results.fronts import Point, pareto_front
from sweeps.results.pngs import draw_best_by_batch, draw_curves, draw_front, write_pngs
from tests.conftest import synthetic_study

RULES = ("none", "linear", "sqrt")
DISTRIBUTIONS = {"batch_size": IntDistribution(16, 512, log=True), "coupling": CategoricalDistribution(RULES)}


def add(study: optuna.Study, batch: int, rule: str, value: float, *, state=TrialState.COMPLETE,
        curve: dict[int, float] | None = None, examples: int = 6000, seconds: float = 1.0) -> None:
    curve = curve or {3000: value - 0.01, 6000: value}
    study.add_trial(create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None, params={"batch_size": batch,
                                                                                    "coupling": rule},
        distributions=DISTRIBUTIONS, intermediate_values=curve,
        user_attrs={"batch_size": batch, "coupling": rule, "lr": 0.01 * batch / 16, "updates": examples // batch,
                    "examples_seen": examples, "train_seconds": seconds}))


def new_study(tmp_path, name: str = "figures") -> optuna.Study:
    return synthetic_study(f"sqlite:///{tmp_path / 'f.db'}", name)


@pytest.fixture
def analysis(tmp_path) -> StudyAnalysis:
    """Good trials in 0.95-0.98 at B=16..256, one poor one (0.17) at B=64 under linear, a curve that
    starts at 0.17, B=64 finished only under none (so linear has a gap there), sqrt only pruned, and B=512
    only pruned."""
    study = new_study(tmp_path)
    good = {16: 0.950, 32: 0.962, 64: 0.975, 128: 0.980, 256: 0.971}
    for b, v in good.items():
        add(study, b, "none", v, curve={3000: 0.17 if b == 16 else v - 0.02, 6000: v},
            examples=6000, seconds=6.0 / math.sqrt(b))
        if b != 64:
            add(study, b, "linear", v - 0.004, examples=6000, seconds=7.0 / math.sqrt(b))
    add(study, 64, "linear", 0.17, examples=1500, seconds=0.1)  # the one bad trial
    add(study, 32, "sqrt", 0.9, state=TrialState.PRUNED, curve={3000: 0.9})
    add(study, 512, "none", 0.8, state=TrialState.PRUNED, curve={3000: 0.8})
    return analyse(study, with_importances=False)


def png_axes(draw, a: StudyAnalysis, *args):
    fig, ax = plt.subplots()
    draw(ax, a, *args)
    return fig, ax


def test_axis_range_excludes_the_outlier_and_keeps_the_good_band(analysis):
    figures = build_figures(analysis, None)
    for key in ("best-by-batch-size", "learning-curves", "pareto-examples", "pareto-seconds"):
        lo, hi = figures[key]["layout"]["yaxis"]["range"]
        assert 0.9 < lo <= 0.946 and hi >= 0.98, (key, lo, hi)

    best = figures["best-by-batch-size"]
    beyond = next(t for t in best["data"] if t["name"].startswith("beyond the axis"))
    assert beyond["x"] == [64] and beyond["y"] == [best["layout"]["yaxis"]["range"][0]] and beyond["text"] == ["0.17"]
    assert beyond["cliponaxis"] is False
    curves = figures["learning-curves"]
    assert "below the axis (lowest 0.16)" in curves["layout"]["annotations"][0]["text"]

    fig, ax = png_axes(draw_best_by_batch, analysis)
    assert ax.get_ylim() == pytest.approx(best["layout"]["yaxis"]["range"])
    assert any(t.get_text() == "0.17" for t in ax.texts), "the clipped value is labelled on the PNG too"
    plt.close(fig)


def test_a_missing_batch_size_breaks_the_line(analysis):
    best = build_figures(analysis, None)["best-by-batch-size"]
    linear = next(t for t in best["data"] if t["name"] == "linear")
    assert linear["x"] == [16, 32, 64, 128, 256] and linear["y"][2] is None  # 0.17 clipped: a gap too
    assert linear["connectgaps"] is False
    none = next(t for t in best["data"] if t["name"] == "none")
    assert none["x"] == [16, 32, 64, 128, 256], "B=512 (pruned only) lies outside none's finished range"
    assert "linear at B=64" not in best["layout"]["annotations"][0]["text"], "clipped is not missing"

    fig, ax = png_axes(draw_best_by_batch, analysis)
    line = next(line for line in ax.lines if line.get_label() == "linear")
    assert list(line.get_xdata()) == [16, 32, 64, 128, 256] and math.isnan(line.get_ydata()[2])
    plt.close(fig)


def test_missing_between_finished_batch_sizes_is_a_gap(tmp_path):
    study = new_study(tmp_path)
    for b in (16, 128, 512):
        add(study, b, "linear", 0.95 + b / 100_000)
    add(study, 256, "linear", 0.9, state=TrialState.PRUNED, curve={3000: 0.9})
    a = analyse(study, with_importances=False)
    best = build_figures(a, None)["best-by-batch-size"]
    linear = next(t for t in best["data"] if t["name"] == "linear")
    assert linear["x"] == [16, 128, 256, 512] and linear["y"][2] is None, "B=256 was tried: no bridge over it"
    assert "linear at B=256" in best["layout"]["annotations"][0]["text"]
    plan = [{"batch_size": b} for b in (16, 32, 64, 128, 256, 512)]  # the plan's grid counts as tried too
    linear = next(t for t in build_figures(a, plan)["best-by-batch-size"]["data"] if t["name"] == "linear")
    assert linear["x"] == [16, 32, 64, 128, 256, 512] and linear["y"][1:3] == [None, None]


def test_a_rule_with_no_finished_trial_gets_a_note(analysis):
    best = build_figures(analysis, None)["best-by-batch-size"]
    assert "no finished trial: sqrt" in best["layout"]["annotations"][0]["text"]
    assert "sqrt: no finished trial" in [t["name"] for t in best["data"]]
    fig, ax = png_axes(draw_best_by_batch, analysis)
    assert "sqrt: no finished trial" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("no finished trial: sqrt" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_all_pruned_batch_size_has_a_full_colour_legend_entry(analysis):
    curves = build_figures(analysis, None)["learning-curves"]["data"]
    entry = next(t for t in curves if t.get("showlegend", True) and t["name"].startswith("B=512"))
    assert entry["name"] == "B=512 (all pruned)" and entry.get("opacity", 1) == 1
    assert all(t["showlegend"] is False for t in curves if "meta" in t), "only the full-colour entries show"


def colours(traces) -> dict[str, str]:
    out = {}
    for t in traces:
        color = (t.get("line") or {}).get("color") or (t.get("marker") or {}).get("color")
        if isinstance(color, str) and t.get("showlegend", True) and not t["name"].startswith(("beyond", "on the")):
            out[t["name"]] = mcolors.to_hex(color)
    return out


def test_html_and_png_share_one_palette(analysis):
    figures = build_figures(analysis, None)
    for key, draw, args in (("best-by-batch-size", draw_best_by_batch, ()), ("learning-curves", draw_curves, ()),
                            ("pareto-examples", draw_front, ("examples",)),
                            ("pareto-seconds", draw_front, ("seconds",))):
        html = colours(figures[key]["data"])
        fig, ax = png_axes(draw, analysis, *args)
        handles = ax.get_legend().legend_handles
        png = {h.get_label(): mcolors.to_hex(h.get_color() if h.get_marker() in ("None", "", None)
                                             else h.get_markerfacecolor()) for h in handles
               if not h.get_label().startswith(("beyond", "on the front"))}
        plt.close(fig)
        shared = set(html) & set(png)
        assert len(shared) >= 3 and {n: html[n] for n in shared} == {n: png[n] for n in shared}, key
    names = set(colours(figures["learning-curves"]["data"]))
    assert {"B=16", "B=128", "B=512 (all pruned)"} <= names
    assert len(set(colours(figures["learning-curves"]["data"]).values())) == len(names), "one colour per batch size"


def dominated(p: Point, points: list[Point]) -> bool:
    return any(q.cost <= p.cost and q.value >= p.value and (q.cost < p.cost or q.value > p.value) for q in points)


def test_pareto_front_is_the_non_dominated_points():
    rng = random.Random(0)
    for n in (1, 5, 40):
        points = [Point(rng.choice([1.0, 2.0, 3.0, 4.0]) * rng.random() + 0.5, round(rng.random(), 1), i, 16)
                  for i in range(n)]
        front = pareto_front(points, maximize=True)
        expected = {p.trial for p in points if not dominated(p, points)}
        # ties (same cost and value) keep one representative
        assert {p.trial for p in front} <= expected
        assert {(p.cost, p.value) for p in front} == {(p.cost, p.value) for p in points if p.trial in expected}
        assert all(a.cost < b.cost and a.value < b.value for a, b in itertools.pairwise(front))
    flipped = [Point(p.cost, -p.value, p.trial, 16) for p in points]
    assert [p.trial for p in pareto_front(flipped, maximize=False)] == [p.trial for p in front]


def test_both_fronts_in_the_report(analysis):
    figures = build_figures(analysis, None)
    by_cost = {}
    for cost in ("examples", "seconds"):
        fig = figures[f"pareto-{cost}"]
        front = fig["data"][0]
        assert front["name"] == "Pareto front" and front["line"]["shape"] == "hv"
        by_cost[cost] = front
    # every complete trial spent 6000 examples except the bad one: that one (beyond the axis) is the
    # cheapest, then the best; in seconds larger batches are faster, so the front holds more of them
    assert by_cost["examples"]["x"] == [1500, 6000] and by_cost["examples"]["y"] == [None, 0.98]
    seconds = by_cost["seconds"]
    assert seconds["x"] == sorted(seconds["x"]) and len(seconds["x"]) >= 3
    values = [v for v in seconds["y"] if v is not None]
    assert values == sorted(values) and values[-1] == 0.98
    fig, ax = png_axes(draw_front, analysis, "seconds")
    step = next(line for line in ax.lines if line.get_label() == "Pareto front")
    assert list(step.get_xdata()) == seconds["x"] and step.get_drawstyle() == "steps-post"
    plt.close(fig)


def test_learning_curves_keep_the_learning_on_the_axis(tmp_path):
    """Every complete trial climbs from about 0.5 to 0.97: the axis shows the climb (nothing below
    it), while one trial's collapse to 0.1 still lies beyond the axis."""
    study = new_study(tmp_path)
    for i, b in enumerate((16, 32, 64, 128, 256, 512)):
        start, end = 0.45 + 0.02 * i, 0.97 + 0.002 * i
        add(study, b, "none", end, curve={1000: start, 2000: 0.9 + 0.01 * i, 3000: 0.95, 6000: end})
    add(study, 64, "linear", 0.96, curve={1000: 0.5, 2000: 0.1, 3000: 0.94, 6000: 0.96})
    a = analyse(study, with_importances=False)
    curves = build_figures(a, None)["learning-curves"]
    lo, hi = curves["layout"]["yaxis"]["range"]
    assert lo < 0.45 and 0.98 <= hi < 1.1, (lo, hi)
    assert curves["layout"]["annotations"][0]["text"] == "1 evaluations of 1 trials below the axis (lowest 0.1)"
    fig, ax = png_axes(draw_curves, a)
    assert ax.get_ylim() == pytest.approx((lo, hi))
    plt.close(fig)


def test_a_batch_size_with_only_pruned_trials_stays_on_the_best_value_axis(analysis):
    """B=512 was tried (pruned only): the best-value figure's batch-size axis still shows it, with a
    note, in both renderings."""
    best = build_figures(analysis, None)["best-by-batch-size"]
    xaxis = best["layout"]["xaxis"]
    assert xaxis["tickvals"] == [16, 32, 64, 128, 256, 512] and xaxis["ticktext"][-1] == "512"
    assert xaxis["range"][0] < math.log10(16) and xaxis["range"][1] > math.log10(512)
    assert "no finished trial at B=512" in best["layout"]["annotations"][0]["text"]

    fig, ax = png_axes(draw_best_by_batch, analysis)
    assert ax.get_xlim()[0] < 16 and ax.get_xlim()[1] > 512
    assert [t.get_text() for t in ax.get_xticklabels()] == ["16", "32", "64", "128", "256", "512"]
    plt.close(fig)


def test_the_html_batch_size_axes_are_labelled_with_the_batch_sizes(analysis):
    figures = build_figures(analysis, None)
    for key, sizes in (("lr-scaling", analysis.lr_fit.batch_sizes),
                       ("steps-to-target", [b for b, *_ in analysis.steps_to_target])):
        xaxis = figures[key]["layout"]["xaxis"]
        assert sizes and xaxis["tickvals"] == sorted(sizes), key
        assert xaxis["ticktext"] == [str(b) for b in sorted(sizes)], key


def test_a_non_ascii_study_name_draws_without_glyph_warnings(tmp_path, recwarn):
    study = synthetic_study(f"sqlite:///{tmp_path / 'f.db'}", "研究-Größe")
    for b, v in {16: 0.95, 64: 0.97, 256: 0.96}.items():
        add(study, b, "none", v)
    written = write_pngs(tmp_path, analyse(study, with_importances=False), None)
    assert (tmp_path / "report.png") in written
    assert not [str(w.message) for w in recwarn if "Glyph" in str(w.message)]


def test_a_study_at_one_batch_size_draws_without_warnings(tmp_path, recwarn):
    """Every good trial at one batch size and LR, a power of ten: the LR figure's log axis has one
    value, whose range matplotlib widened itself, with a warning on the report's stderr."""
    study = new_study(tmp_path)
    for v in (0.95, 0.96, 0.97):
        add(study, 16, "none", v)  # LR 0.01
    written = write_pngs(tmp_path, analyse(study, with_importances=False), None)
    assert (tmp_path / "report.png") in written
    assert [str(w.message) for w in recwarn] == []
