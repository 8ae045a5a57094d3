"""The report's figures as PNG files, drawn with matplotlib (no browser needed)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.ft2font import FT2Font  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from sweeps.results.analysis import RULE_SLOPES, StudyAnalysis  # noqa: E402
from sweeps.results.horizons import length_text  # noqa: E402
from sweeps.results.palette import BARS, FIT, GREY, batch_color, batch_colors  # noqa: E402
from sweeps.results.ranges import Range  # noqa: E402
from sweeps.results.series import Beyond, best_view, curve_view, front_views  # noqa: E402

NOTE = "#aa3333"


def nan(values: list[float | None]) -> list[float]:
    """None (a gap) as NaN, which matplotlib does not bridge."""
    return [math.nan if v is None else v for v in values]


@functools.cache
def drawn_characters() -> frozenset[int]:
    """The code points the figures' fonts (matplotlib's font.family, with its fallbacks) can draw."""
    paths = {font_manager.findfont(font_manager.FontProperties(family=[family]))
             for family in plt.rcParams["font.family"]}
    return frozenset(code for path in paths for code in FT2Font(path).get_charmap())


def drawable(text: str) -> str:
    """The text with "?" for each character no font can draw (a CJK study name, with only DejaVu
    Sans installed), which matplotlib would otherwise drop with a warning per glyph."""
    return "".join(c if ord(c) in drawn_characters() or c.isspace() else "?" for c in text)


def set_range(ax, rng: Range | None) -> None:
    if rng is not None:
        ax.set_ylim(rng.lo, rng.hi)


def batch_ticks(ax, sizes: list[int]) -> None:
    """A log batch-size x axis ticked at the batch sizes and spanning all of them, drawn or not."""
    if sizes:
        lo, hi = min(sizes), max(sizes)
        pad = (hi / lo) ** 0.05 if hi > lo else 1.5
        ax.set_xlim(lo / pad, hi * pad)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())


def draw_beyond(ax, points: list[Beyond]) -> list[Line2D]:
    """Values beyond the y range: triangles on the edge, labelled with their value; the legend handle."""
    for p in points:
        ax.plot([p.x], [p.at], "v" if p.side < 0 else "^", ms=9, color=p.color, clip_on=False, zorder=5)
        ax.annotate(f"{p.value:.3g}", (p.x, p.at), xytext=(0, 7 if p.side < 0 else -11), textcoords="offset points",
                    ha="center", fontsize=7, color=p.color, annotation_clip=False)
    return [Line2D([], [], marker="v", ls="", color=GREY, label="beyond the axis (at its edge)")] if points else []


def note(ax, text: str, title: str) -> None:
    """The title, with what is missing or clipped in a smaller line under it."""
    ax.set_title(title, pad=14 if text else 6)
    if text:
        ax.text(0, 1.01, text, transform=ax.transAxes, fontsize=7, color=NOTE, va="bottom")


def draw_best_by_batch(ax, a: StudyAnalysis, plan: list[dict] | None = None) -> None:
    view = best_view(a, plan)
    for line in view.lines:
        ax.plot(line.x, nan(line.y), "o-", color=line.color, label=line.name)
    handles = [Line2D([], [], marker="x", ls="", color=color, label=label) for label, color in view.absent]
    handles += draw_beyond(ax, view.beyond)
    ax.set_xscale("log", base=2)
    batch_ticks(ax, view.grid)
    set_range(ax, view.y_range)
    ax.set(xlabel="batch size", ylabel=f"best {a.metric}")
    note(ax, view.note, "Best value per batch size and coupling rule")
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, fontsize=8)


def draw_curves(ax, a: StudyAnalysis, plan: list[dict] | None = None) -> None:
    view = curve_view(a, plan)
    for c in view.lines:
        ax.plot(c.x, nan(c.y), color=c.color, alpha=0.3 if c.faded else 0.9, lw=0.9 if c.faded else 1.6)
    set_range(ax, view.y_range)
    ax.set(xlabel=f"{a.step_unit} consumed", ylabel=a.metric)
    note(ax, view.note, "Learning curves (pruned faded)")
    ax.legend(handles=[Line2D([], [], color=color, lw=2.5, label=label) for label, color in view.legend],
              fontsize=7, ncol=2)


def draw_front(ax, a: StudyAnalysis, cost: str, plan: list[dict] | None = None) -> None:
    view = next(v for v in front_views(a, plan) if v.cost == cost)
    ax.plot(view.front.x, nan(view.front.y), drawstyle="steps-post", color=view.front.color, lw=1.2,
            label="Pareto front")
    for label, color in view.legend:
        pts = [p for p in view.points if p[3] == label]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=color, ms=6, mec="white", label=label)
    front = [(x, y) for x, y in zip(view.front.x, view.front.y) if y is not None]
    ax.plot([p[0] for p in front], [p[1] for p in front], "o", ms=11, mfc="none", mec=view.front.color,
            label="on the front")
    handles = draw_beyond(ax, view.beyond)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # labelled ticks even within one decade, none crowded
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    set_range(ax, view.y_range)
    ax.set(xlabel=view.axis_title, ylabel=a.metric, title=f"{a.metric} against {view.axis_title}: Pareto front")
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, fontsize=7, ncol=2)


def draw_steps(ax, a: StudyAnalysis) -> None:
    pts = a.steps_to_target
    if pts:
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], "o-", label="updates to target")
        ax.plot(xs, [pts[0][1] * pts[0][0] / b for b in xs], "--", color=GREY, label="perfect scaling")
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
        ax.plot(xs, [centre * (x / mid) ** fit.slope for x in xs], "-", color=FIT, label=label)
        if fit.half_width is not None:
            low = [centre * (x / mid) ** (fit.slope - fit.half_width) for x in xs]
            high = [centre * (x / mid) ** (fit.slope + fit.half_width) for x in xs]
            ax.fill_between(xs, [min(p) for p in zip(low, high)], [max(p) for p in zip(low, high)],
                            color=FIT, alpha=0.15, label="95% CI of the slope")
        for rule, slope in RULE_SLOPES.items():
            ax.plot(xs, [centre * (x / mid) ** slope for x in xs], ":", color="grey", lw=0.8)
            ax.annotate(rule, (xs[-1], centre * (xs[-1] / mid) ** slope), fontsize=7, color="grey")
    if fit.slope is None and len(set(fit.lrs)) == 1:  # one LR: a range around it, not matplotlib's warning
        ax.set_ylim(fit.lrs[0] / 3, fit.lrs[0] * 3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="batch size", ylabel="effective peak LR", title="Best LR against batch size")
    ax.legend(fontsize=8)


def draw_importances(ax, a: StudyAnalysis) -> None:
    items = sorted(a.importances.items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in items], [v for _, v in items], color=BARS[0])
    ax.set(xlabel="importance", title="Parameter importances")


def draw_plan(ax, a: StudyAnalysis, plan: list[dict]) -> None:
    labels = [str(r["batch_size"]) for r in plan]
    updates = [r["updates"] for r in plan]
    if all(isinstance(u, (int, float)) for u in updates):
        ax.bar(labels, updates, color=BARS[0], label="updates")
        ax.set_yscale("log")
        twin = ax.twinx()
        epochs = [r["epochs"] for r in plan]
        twin.plot(labels, epochs, "o-", color=BARS[2], label="epochs")
        twin.set_ylabel("epochs")
        twin.set_ylim(0, 1.25 * max(epochs))  # room above the markers and the legend: none sits on the frame
        twin.legend(loc="center right", fontsize=8)
        ax.legend(loc="upper right", fontsize=8)
    ax.set(xlabel="batch size", ylabel="updates", title="Plan of the budget")


def draw_noise(ax, a: StudyAnalysis) -> None:
    """Each trial's B_simple against examples seen (log y), by batch size; circles where it reached the target."""
    curves = a.noise.curves if a.noise else []
    colors = batch_colors([c.batch_size for c in curves if c.batch_size is not None] or [0])
    for c in curves:
        color = batch_color(c.batch_size, colors)
        ax.plot(nan(c.examples), c.values, ".-", color=color, lw=1.2, ms=3)
        if c.at_target is not None:
            ax.plot([c.examples[c.reached]], [c.at_target], "o", ms=9, mfc="none", mec=color)
    ax.set_yscale("log")
    ax.set(xlabel="examples seen", ylabel="B_simple")
    note(ax, a.noise.headline() if a.noise else "", "Gradient noise scale per trial (o: at the target)")
    ax.legend(handles=[Line2D([], [], color=color, lw=2, label=f"B={b}") for b, color in colors.items() if b],
              fontsize=7)


def draw_horizons(ax, a: StudyAnalysis) -> None:
    """The best-so-far frontier against what the sweep spent, each horizon's best marked and labelled."""
    pts = a.horizons
    xs = [p.spent for p in pts]
    ax.plot(xs, [p.so_far for p in pts], drawstyle="steps-post", color=BARS[0], lw=1.4, label="best so far")
    ax.plot(xs, [p.best for p in pts], "o", color=BARS[0], ms=7, label="best at the horizon")
    for p in pts:
        ax.annotate(f"{length_text(p.length)} ({p.fraction})", (p.spent, p.best), xytext=(4, -11),
                    textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    ax.margins(x=0.12)  # room for the last label
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=f"{a.budget_unit} spent by the sweep", ylabel=f"best {a.metric}",
           title="Best value against compute over all horizons")
    ax.legend(fontsize=8)


def write_pngs(out: Path, a: StudyAnalysis, plan: list[dict] | None) -> list[Path]:
    panels = [("best_by_batch_size", lambda ax, a: draw_best_by_batch(ax, a, plan)), ("lr_scaling", draw_lr),
              ("steps_to_target", draw_steps), ("learning_curves", lambda ax, a: draw_curves(ax, a, plan)),
              ("pareto_examples", lambda ax, a: draw_front(ax, a, "examples", plan)),
              ("pareto_seconds", lambda ax, a: draw_front(ax, a, "seconds", plan))]
    if a.importances:
        panels.append(("importances", draw_importances))
    if plan:
        panels.append(("budget_plan", lambda ax, a: draw_plan(ax, a, plan)))
    if a.noise is not None:
        panels.append(("noise_scale", draw_noise))
    if a.horizons:
        panels.append(("horizons", draw_horizons))
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
    fig.suptitle(drawable(f"{a.study_name}: {a.lr_fit.headline()}"), fontsize=12)
    path = out / "report.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)
    return written
