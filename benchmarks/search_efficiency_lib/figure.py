"""The search-efficiency figure: best value found against compute spent, one panel per task.

Each line is one method's median over seeds of the best value seen within x examples, with the
interquartile band; the dashed lines are the targets of the two margins, and the value axis is
zoomed on them (ten times the gap between them beyond the looser one). Where a method's median
line crosses a target is its median compute to that target (the tables' figure), and the band
shows how much seeds disagree. Drawn by `benchmarks/search_efficiency.py --load ... --figure PATH`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

POINTS = 60  # compute levels per curve, log-spaced from C/100 to C
COLORS = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def levels(total: float) -> list[float]:
    low = total / 100
    return [low * (total / low) ** (i / (POINTS - 1)) for i in range(POINTS)]


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def draw(panels: list[dict], labels: Sequence[str], best_within: Callable[[object, float, bool], float | None],
         path: str, title: str, emphasis: str = "service") -> None:
    """`panels`: one dict per task with name, metric, maximize, total (C), cells (label -> the runs'
    records), targets (margin title -> value); `best_within(records, compute, maximize)` gives one
    run's best value within that compute (None before its first evaluation). The `emphasis` line
(the service) is drawn thicker and on top."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        xs = levels(panel["total"])
        low_y, high_y = math.inf, -math.inf
        for i, label in enumerate(labels):
            runs = panel["cells"].get(label)
            if not runs:
                continue
            mids, los, his, at = [], [], [], []
            for x in xs:
                values = [v for v in (best_within(r, x, panel["maximize"]) for r in runs) if v is not None]
                if len(values) * 2 <= len(runs):  # fewer than half the seeds have a value yet
                    continue
                lo, mid, hi = quartiles(sorted(values))
                mids.append(mid), los.append(lo), his.append(hi), at.append(x / panel["total"])
            if not at:
                continue
            color = COLORS[i % len(COLORS)]
            main = label == emphasis
            ax.plot(at, mids, color=color, lw=2.4 if main else 1.3, zorder=3 if main else 2,
                    label=f"{label} ({len(runs)} seeds)")
            ax.fill_between(at, los, his, color=color, alpha=0.12, lw=0)
            low_y, high_y = min(low_y, *mids), max(high_y, *mids)
        for j, (name, value) in enumerate(panel["targets"].items()):
            ax.axhline(value, color="#444444", ls="--" if j == 0 else ":", lw=1, label=f"target, {name}")
            low_y, high_y = min(low_y, value), max(high_y, value)
        targets = list(panel["targets"].values())
        if targets and math.isfinite(low_y):  # zoom on the targets: that is where the methods differ
            window = 10 * (max(targets) - min(targets) or abs(targets[0]) * 0.02)
            if panel["maximize"]:
                low_y, high_y = min(targets) - window, max(high_y, max(targets))
            else:
                low_y, high_y = min(low_y, min(targets)), max(targets) + window
        if math.isfinite(low_y):
            pad = 0.08 * (high_y - low_y or 1e-3)
            ax.set_ylim(low_y - pad, high_y + pad)
        ax.set_xscale("log")
        ax.set_xlabel("compute spent, fraction of C (log)")
        ax.set_ylabel(f"best {panel['metric']} so far ({'higher' if panel['maximize'] else 'lower'} is better)")
        ax.set_title(panel["name"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left" if panel["maximize"] else "lower left")  # where curves are not
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_share(panels: list[dict], labels: Sequence[str], path: str, title: str, emphasis: str) -> None:
    """Issue 30's figure: per task (rows) and margin (columns), the share of seeds that have reached
    the target within x examples (evaluations charged), x log-spaced from C/100 to C, one line per
    method. A seed that never reaches it keeps the line below 1: misses count. `panels`: dicts with
    task, margin, total (C) and costs (label -> each seed's compute to target, inf when missed)."""
    tasks = list(dict.fromkeys(p["task"] for p in panels))
    margins = list(dict.fromkeys(p["margin"] for p in panels))
    fig, axes = plt.subplots(len(tasks), len(margins), figsize=(5.2 * len(margins), 3.2 * len(tasks)),
                             squeeze=False)
    for panel in panels:
        ax = axes[tasks.index(panel["task"])][margins.index(panel["margin"])]
        xs = levels(panel["total"])
        for i, label in enumerate(labels):
            costs = panel["costs"].get(label)
            if not costs:
                continue
            shares = [sum(c <= x for c in costs) / len(costs) for x in xs]
            ax.step(xs, shares, where="post", color=COLORS[i % len(COLORS)], label=label,
                    linewidth=2.4 if label == emphasis else 1.2)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{panel['task']}, {panel['margin']}", fontsize=9)
        ax.set_xlabel("examples (evaluations charged)", fontsize=8)
        ax.set_ylabel("share of seeds at target", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
