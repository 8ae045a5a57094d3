"""The report's figures as PNG files, drawn with matplotlib (no browser needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sweeps.results.analysis import RULE_SLOPES, StudyAnalysis  # noqa: E402

COLORS = plt.get_cmap("tab10").colors


def draw_best_by_batch(ax, a: StudyAnalysis) -> None:
    for i, (rule, pts) in enumerate(a.best_by_batch.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS[i % 10], label=rule)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size", ylabel=f"best {a.metric}", title="Best value per batch size and coupling rule")
    ax.legend(fontsize=8)


def draw_curves(ax, a: StudyAnalysis) -> None:
    batches = sorted({c.batch_size for c in a.curves if c.batch_size is not None})
    seen = set()
    for c in sorted(a.curves, key=lambda c: (c.batch_size or 0, c.number)):
        color = COLORS[batches.index(c.batch_size) % 10] if c.batch_size in batches else "grey"
        done = c.state == "complete"
        ax.plot(c.steps, c.values, color=color, alpha=0.9 if done else 0.2, lw=1.6 if done else 0.8,
                label=f"B={c.batch_size}" if c.batch_size not in seen else None)
        seen.add(c.batch_size)
    ax.set(xlabel=f"{a.step_unit} consumed", ylabel=a.metric, title="Learning curves (pruned faded)")
    ax.legend(fontsize=7, ncol=2)


def draw_steps(ax, a: StudyAnalysis) -> None:
    pts = a.steps_to_target
    if pts:
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], "o-", label="updates to target")
        ax.plot(xs, [pts[0][1] * pts[0][0] / b for b in xs], "--", color="grey", label="perfect scaling")
        ax.plot(xs, [pts[0][1]] * len(xs), ":", color="silver", label="no benefit")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    target = "-" if a.target is None else f"{a.target:.4g}"
    ax.set(xlabel="batch size", ylabel="updates", title=f"Updates to reach {a.metric} {target}")


def draw_lr(ax, a: StudyAnalysis) -> None:
    fit = a.lr_fit
    ax.plot(fit.batch_sizes, fit.lrs, "o", ms=7, label="good trials' mean LR per batch size")
    if fit.slope is not None:
        lo, hi = min(fit.batch_sizes), max(fit.batch_sizes)
        xs = [lo * (hi / lo) ** (i / 40) for i in range(41)]
        mid = math.sqrt(lo * hi)
        centre = math.exp(fit.intercept) * mid ** fit.slope
        label = f"B^{fit.slope:.2f}" + ("" if fit.half_width is None else f" ± {fit.half_width:.2f}")
        ax.plot(xs, [centre * (x / mid) ** fit.slope for x in xs], "-", color="C3", label=label)
        if fit.half_width is not None:
            low = [centre * (x / mid) ** (fit.slope - fit.half_width) for x in xs]
            high = [centre * (x / mid) ** (fit.slope + fit.half_width) for x in xs]
            ax.fill_between(xs, [min(p) for p in zip(low, high)], [max(p) for p in zip(low, high)],
                            color="C3", alpha=0.15, label="95% CI of the slope")
        for rule, slope in RULE_SLOPES.items():
            ax.plot(xs, [centre * (x / mid) ** slope for x in xs], ":", color="grey", lw=0.8)
            ax.annotate(rule, (xs[-1], centre * (xs[-1] / mid) ** slope), fontsize=7, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="batch size", ylabel="effective peak LR", title="Best LR against batch size")
    ax.legend(fontsize=8)


def draw_importances(ax, a: StudyAnalysis) -> None:
    items = sorted(a.importances.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
    ax.set(xlabel="importance", title="Parameter importances")


def draw_plan(ax, a: StudyAnalysis, plan: list[dict]) -> None:
    labels = [str(r["batch_size"]) for r in plan]
    updates = [r["updates"] for r in plan]
    if all(isinstance(u, (int, float)) for u in updates):
        ax.bar(labels, updates, color="C0", label="updates")
        ax.set_yscale("log")
        twin = ax.twinx()
        twin.plot(labels, [r["epochs"] for r in plan], "o-", color="C1", label="epochs")
        twin.set_ylabel("epochs")
        twin.set_ylim(bottom=0)
        twin.legend(loc="center right", fontsize=8)
        ax.legend(loc="upper right", fontsize=8)
    ax.set(xlabel="batch size", ylabel="updates", title="Plan of the budget")


def write_pngs(out: Path, a: StudyAnalysis, plan: list[dict] | None) -> list[Path]:
    panels = [("best_by_batch_size", draw_best_by_batch), ("lr_scaling", draw_lr),
              ("steps_to_target", draw_steps), ("learning_curves", draw_curves)]
    if a.importances:
        panels.append(("importances", draw_importances))
    if plan:
        panels.append(("budget_plan", lambda ax, a: draw_plan(ax, a, plan)))
    written = []
    for name, draw in panels:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        draw(ax, a)
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    cols = 3 if len(panels) > 4 else 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.3 * rows), layout="constrained", squeeze=False)
    for ax, (_, draw) in zip(axes.flat, panels):
        draw(ax, a)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{a.study_name}: {a.lr_fit.headline()}", fontsize=12)
    path = out / "report.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)
    return written
