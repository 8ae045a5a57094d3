"""What the report's trial figures draw, decided once for both renderers (plotly in `figures`,
matplotlib in `pngs`): the series, their colours, the gaps, the axis range and what lies beyond it.

- y ranges come from the complete trials' values (`ranges.robust_range`); a point beyond is drawn
  at the edge as a `Beyond` marker that carries its real value, and its line breaks there; the
  learning curves' range spans the complete trials' band at every evaluation, so it shows the
  learning, not only where it ended;
- a batch size with no finished trial of a rule is a gap (None), never bridged by a line;
- a searched rule with no finished trial keeps a legend entry and a note.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from sweeps.results.analysis import StudyAnalysis
from sweeps.results.fronts import COSTS, fronts
from sweeps.results.palette import batch_color, batch_colors, rule_color
from sweeps.results.ranges import Range, robust_range


@dataclass(frozen=True)
class Beyond:
    """A value outside the axis range, drawn at the edge it lies beyond."""

    x: float
    value: float
    side: int  # -1 below, +1 above
    trial: int | None
    color: str
    at: float  # where it is drawn: the edge of the range


@dataclass
class Line:
    name: str
    x: list[float]
    y: list[float | None]  # None: a gap (no finished trial there, or a value beyond the range)
    color: str
    trials: list[int | None]


@dataclass
class BestView:
    lines: list[Line]
    absent: list[tuple[str, str]]  # (legend label, colour) of searched rules with no finished trial
    beyond: list[Beyond]
    y_range: Range | None
    note: str  # what is missing, in words ("" when nothing is)
    grid: list[int]  # the batch-size axis: every size tried or planned, finished or not


@dataclass
class CurveLine:
    trial: int
    state: str
    batch_size: int | None
    coupling: str | None
    x: list[int]
    y: list[float | None]
    color: str

    @property
    def faded(self) -> bool:
        return self.state != "complete"


@dataclass
class CurveView:
    lines: list[CurveLine]
    legend: list[tuple[str, str]]  # one full-colour (label, colour) per batch size
    y_range: Range | None
    note: str  # evaluations below (or above) the range, in words


@dataclass
class FrontView:
    cost: str  # a key of fronts.COSTS
    axis_title: str
    points: list[tuple[float, float, int, str, str]]  # (cost, value, trial, legend label, colour), in range
    front: Line  # the non-dominated trials, cheapest first; gaps where beyond the range
    beyond: list[Beyond]
    y_range: Range | None
    legend: list[tuple[str, str]] = field(default_factory=list)


def batch_label(batch: int | None) -> str:
    return "B unknown" if batch is None else f"B={batch}"


def value_range(a: StudyAnalysis) -> Range | None:
    """The y range of every figure of the metric: the band of the complete trials' values."""
    return robust_range(t.value for t in a.complete)


def curve_range(a: StudyAnalysis) -> Range | None:
    """The learning curves' y range: the union of the complete trials' bands at their first, second,
    ... evaluation (each band robust, so one trial's collapse still lies beyond), and the final values'."""
    complete = [c.values for c in a.curves if c.state == "complete"]
    bands = [robust_range(values) for values in itertools.zip_longest(*complete)] + [value_range(a)]
    bands = [b for b in bands if b is not None]
    return Range(min(b.lo for b in bands), max(b.hi for b in bands)) if bands else None


def batch_grid(a: StudyAnalysis, plan: list[dict] | None = None) -> list[int]:
    """Every batch size the study tried (any state) or planned: the x positions a line may not skip."""
    sizes = {c.batch_size for c in a.curves} | {p[0] for pts in a.best_by_batch.values() for p in pts}
    sizes |= {r["batch_size"] for r in plan or [] if isinstance(r.get("batch_size"), int)}
    return sorted(b for b in sizes if b is not None)


def searched_rules(a: StudyAnalysis) -> list[str]:
    """The coupling rules the study searched (its distribution's choices), then any other seen."""
    rules: list[str] = []
    for t in a.complete:
        dist = t.distributions.get("coupling")
        if dist is not None and hasattr(dist, "choices"):
            rules = [str(c) for c in dist.choices]
            break
    seen = list(a.best_by_batch) + [str(c.coupling) for c in a.curves if c.coupling is not None]
    return rules + [r for r in dict.fromkeys(seen) if r not in rules]


def best_view(a: StudyAnalysis, plan: list[dict] | None = None) -> BestView:
    grid, rules, rng = batch_grid(a, plan), searched_rules(a), value_range(a)
    lines, beyond, gaps = [], [], []
    for rule, pts in a.best_by_batch.items():
        color = rule_color(rule, rules)
        at = {b: (v, n) for b, v, n in pts}
        lo, hi = min(at), max(at)
        xs = [b for b in grid if lo <= b <= hi]
        ys: list[float | None] = []
        for b in xs:
            value = at.get(b, (None, None))[0]
            side = rng.side(value) if rng else 0
            if side:
                beyond.append(Beyond(b, value, side, at[b][1], color, rng.edge(side)))
            ys.append(None if side else value)
        missing = [b for b in xs if b not in at]
        if missing:
            gaps.append(f"{rule} at B={', '.join(map(str, missing))}")
        lines.append(Line(rule, xs, ys, color, [at.get(b, (None, None))[1] for b in xs]))
    absent = [r for r in rules if r not in a.best_by_batch]
    outside = [b for b in grid if not any(b in line.x for line in lines)]  # tried, but past every line's ends
    notes = []
    if absent:
        notes.append(f"no finished trial: {', '.join(absent)}")
    if gaps:
        notes.append(f"gaps (no finished trial): {'; '.join(gaps)}")
    if outside:
        notes.append(f"no finished trial at B={', '.join(map(str, outside))}")
    labels = [(f"{r}: no finished trial", rule_color(r, rules)) for r in absent]
    return BestView(lines, labels, beyond, rng, "; ".join(notes), grid)


def curve_view(a: StudyAnalysis, plan: list[dict] | None = None) -> CurveView:
    colors = batch_colors(batch_grid(a, plan))
    rng = curve_range(a)
    lines, out = [], {-1: [], 1: []}
    for c in sorted(a.curves, key=lambda c: (c.batch_size or 0, c.number)):
        ys = [v if math.isfinite(v) else None for v in c.values]
        for v in ys:
            if rng and rng.side(v):
                out[rng.side(v)].append((v, c.number))
        lines.append(CurveLine(c.number, c.state, c.batch_size, c.coupling, list(c.steps), ys,
                               batch_color(c.batch_size, colors)))
    legend = []
    for b in sorted({c.batch_size for c in a.curves if c.batch_size is not None}):
        states = {line.state for line in lines if line.batch_size == b}
        suffix = "" if "complete" in states else f" (all {'/'.join(sorted(states))})"
        legend.append((f"B={b}{suffix}", colors[b]))
    notes = []
    for side, word, pick in ((-1, "below", min), (1, "above", max)):
        if out[side]:
            extreme = pick(v for v, _ in out[side])
            notes.append(f"{len(out[side])} evaluations of {len({n for _, n in out[side]})} trials {word} the axis "
                         f"({'lowest' if side < 0 else 'highest'} {extreme:.3g})")
    return CurveView(lines, legend, rng, "; ".join(notes))


def front_views(a: StudyAnalysis, plan: list[dict] | None = None) -> list[FrontView]:
    colors = batch_colors(batch_grid(a, plan))
    rng = value_range(a)
    views = []
    for cost, f in fronts(a.complete, a.maximize).items():
        points, beyond = [], []
        for p in f.points:
            color = batch_color(p.batch_size, colors)
            side = rng.side(p.value) if rng else 0
            if side:
                beyond.append(Beyond(p.cost, p.value, side, p.trial, color, rng.edge(side)))
            else:
                points.append((p.cost, p.value, p.trial, batch_label(p.batch_size), color))
        line = Line("Pareto front", [p.cost for p in f.front],
                    [None if rng and rng.side(p.value) else p.value for p in f.front], "#222222",
                    [p.trial for p in f.front])
        batches = {p.batch_size for p in f.points}
        ordered = sorted(b for b in batches if b is not None) + ([None] if None in batches else [])
        legend = [(batch_label(b), batch_color(b, colors)) for b in ordered]
        views.append(FrontView(cost, COSTS[cost][1], points, line, beyond, rng, legend))
    return views
