"""The report's colours, defined once: the HTML (plotly) and PNG (matplotlib) figures both read them.

A coupling rule keeps its colour in every figure and every study (fixed by name). Batch sizes are
ordered, so they take a sequential scale (dark: small, light: large) spread over the study's
batch sizes.
"""

from __future__ import annotations

RULES = {"none": "#1f77b4", "sqrt": "#ff7f0e", "linear": "#2ca02c"}
OTHER_RULES = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
# plasma from 0 to 0.82 (past that it is too pale on white), interpolated between these anchors
BATCHES = ["#0d0887", "#43039e", "#6c00a8", "#920fa3", "#b32c8e", "#ce4b75", "#e4695e", "#f48948", "#fdae32"]
GREY = "#7f7f7f"
FIT = "#d62728"  # a fitted line and its interval
BARS = ["#1f77b4", "#d62728", "#2ca02c"]  # the budget plan's three panels: updates, examples, epochs


def rule_color(rule: str | None, rules: list[str] | None = None) -> str:
    """The colour of a coupling rule: fixed for the three known rules, else by place in `rules`."""
    if rule in RULES:
        return RULES[rule]
    others = [r for r in (rules or []) if r not in RULES]
    if rule in others:
        return OTHER_RULES[others.index(rule) % len(OTHER_RULES)]
    return GREY


def batch_colors(batches: list[int]) -> dict[int, str]:
    """One colour per batch size, in order along the sequential scale (as far apart as it allows)."""
    ordered = sorted(set(batches))
    if len(ordered) == 1:
        return {ordered[0]: BATCHES[0]}
    return {b: along(BATCHES, i / (len(ordered) - 1)) for i, b in enumerate(ordered)}


def along(anchors: list[str], t: float) -> str:
    """The colour at `t` in [0, 1] along the anchors, interpolated in RGB."""
    x = t * (len(anchors) - 1)
    i = min(int(x), len(anchors) - 2)
    lo, hi = (tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in (anchors[i], anchors[i + 1]))
    return "#" + "".join(f"{round(a + (x - i) * (b - a)):02x}" for a, b in zip(lo, hi))


def batch_color(batch: int | None, colors: dict[int, str]) -> str:
    return colors.get(batch, GREY) if batch is not None else GREY
