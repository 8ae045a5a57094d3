"""The report's figures as plotly figure specs: written to report.html and saved as dashboard plots.

A figure is a plain `{"data": [...], "layout": {...}}` mapping, plotly's JSON schema, built without
importing plotly: the runner saves them to the dashboard at the end of every sweep, where plotly's
import alone would cost more than the sweep's whole bookkeeping. `write_html` uses plotly itself.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sweeps.config.plan import plan_rows
from sweeps.config.study_file import SweepConfig
from sweeps.results.analysis import RULE_SLOPES, StudyAnalysis
from sweeps.results.horizons import length_text
from sweeps.results.palette import BARS, batch_color, batch_colors
from sweeps.results.ranges import Range
from sweeps.results.series import Beyond, best_view, curve_view, front_views

Figure = dict[str, Any]

LAYOUT = dict(height=460, margin=dict(l=60, r=20, t=60, b=50), legend=dict(orientation="h", y=-0.2),
              plot_bgcolor="white", hovermode="closest")
GRID = dict(gridcolor="#e5e5e5", zeroline=False, showline=True, linecolor="#999", automargin=True)


def scatter(**trace) -> dict:
    return {"type": "scatter", **trace}


def figure(data: list[dict], title: str, xaxis: dict, yaxis: dict, **layout) -> Figure:
    return {"data": data, "layout": {**LAYOUT, "title": {"text": title}, "xaxis": {**GRID, **xaxis},
                                     "yaxis": {**GRID, **yaxis}, **layout}}


def axis_title(text: str) -> dict:
    return {"title": {"text": text}}

# figure id (also the dashboard graph-object id) -> title
TITLES = {
    "best-by-batch-size": "Best {metric} against batch size, per coupling rule",
    "learning-curves": "Learning curves on the budget grid ({unit} consumed); pruned trials faded",
    "steps-to-target": "Updates to reach {metric} {target} against batch size (log-log)",
    "lr-scaling": "Best effective LR against batch size: {fit}",
    "importances": "Parameter importances (fANOVA)",
    "budget-plan": "Plan of the budget per batch size",
    "pareto-examples": "{metric} against examples seen: the Pareto front of the complete trials",
    "pareto-seconds": "{metric} against train seconds: the Pareto front of the complete trials",
    "horizons": "Best {metric} against compute over all horizons (the sweep's {budget_unit}; labels: horizon)",
    "noise-scale": "Gradient noise scale B_simple against examples seen, per trial (circles: where it reached the "
                   "target)",
}


def title(key: str, a: StudyAnalysis) -> str:
    target = "-" if a.target is None else f"{a.target:.4g}"
    fit = "no fit" if a.lr_fit.slope is None else a.lr_fit.headline()
    return TITLES[key].format(metric=a.metric, unit=a.step_unit, target=target, fit=fit, budget_unit=a.budget_unit)


def batch_axis(sizes: list[int]) -> dict:
    """A log batch-size x axis ticked and labelled at the batch sizes (plotly would write 2 3 ... 9 100),
    spanning every one of them, drawn or not."""
    if not sizes:
        return {"type": "log", **axis_title("batch size")}
    lo, hi = math.log10(min(sizes)), math.log10(max(sizes))
    pad = max(0.05 * (hi - lo), 0.1)
    return {"type": "log", "tickvals": sorted(sizes), "ticktext": [str(b) for b in sorted(sizes)],
            "range": [lo - pad, hi + pad], **axis_title("batch size")}


def y_range(rng: Range | None) -> dict:
    return {} if rng is None else {"range": [rng.lo, rng.hi]}


def beyond_traces(points: list[Beyond], metric: str) -> list[dict]:
    """Values beyond the y range, as triangles on the edge they lie beyond, labelled with their value."""
    if not points:
        return []
    return [scatter(x=[p.x for p in points], y=[p.at for p in points], name="beyond the axis (drawn at its edge)",
                    mode="markers+text", cliponaxis=False, text=[f"{p.value:.3g}" for p in points],
                    textposition=["top center" if p.side < 0 else "bottom center" for p in points],
                    textfont={"size": 10, "color": [p.color for p in points]},
                    marker={"symbol": ["triangle-down" if p.side < 0 else "triangle-up" for p in points],
                            "size": 12, "color": [p.color for p in points]},
                    customdata=[[p.value, p.trial] for p in points],
                    hovertemplate=f"x=%{{x}}<br>{metric}=%{{customdata[0]:.4f}} (beyond the axis)<br>"
                                  "trial %{customdata[1]}<extra></extra>")]


def note_annotation(text: str) -> list[dict]:
    if not text:
        return []
    return [{"text": text, "x": 0, "y": 1.0, "xref": "paper", "yref": "paper", "xanchor": "left", "yanchor": "bottom",
             "showarrow": False, "font": {"size": 11, "color": "#a33"}}]


def best_by_batch_size(a: StudyAnalysis, plan: list[dict] | None = None) -> Figure:
    view = best_view(a, plan)
    data = []
    for line in view.lines:
        data.append(scatter(
            x=line.x, y=line.y, name=line.name, mode="lines+markers", connectgaps=False,
            line={"color": line.color}, marker={"color": line.color}, customdata=line.trials,
            hovertemplate="B=%{x}<br>" + a.metric + "=%{y:.4f}<br>trial %{customdata}<extra>" + line.name + "</extra>"))
    for label, color in view.absent:
        data.append(scatter(x=[None], y=[None], name=label, mode="markers",
                            marker={"color": color, "symbol": "x-open", "size": 10}))
    data += beyond_traces(view.beyond, a.metric)
    return figure(data, title("best-by-batch-size", a), batch_axis(view.grid),
                  {**axis_title(f"best {a.metric}"), **y_range(view.y_range)},
                  annotations=note_annotation(view.note))


def learning_curves(a: StudyAnalysis, plan: list[dict] | None = None) -> Figure:
    view = curve_view(a, plan)
    data = []
    for c in view.lines:
        data.append(scatter(
            x=c.x, y=c.y, mode="lines", name=f"B={c.batch_size}", legendgroup=f"B={c.batch_size}",
            showlegend=False, opacity=0.3 if c.faded else 0.9, line={"color": c.color, "width": 1 if c.faded else 2},
            meta={"trial": c.trial, "state": c.state},
            hovertemplate=f"trial {c.trial} ({c.state}, B={c.batch_size}, {c.coupling})<br>"
                          "step %{x}<br>%{y:.4f}<extra></extra>"))
    for label, color in view.legend:  # full-colour legend entries, even for a batch size whose trials all faded
        data.append(scatter(x=[None], y=[None], mode="lines", name=label, legendgroup=label.split(" ")[0],
                            line={"color": color, "width": 3}, hoverinfo="skip"))
    return figure(data, title("learning-curves", a), axis_title(f"{a.step_unit} consumed"),
                  {**axis_title(a.metric), **y_range(view.y_range)}, annotations=note_annotation(view.note))


def pareto(a: StudyAnalysis, cost: str, plan: list[dict] | None = None) -> Figure:
    view = next(v for v in front_views(a, plan) if v.cost == cost)
    data = [scatter(x=view.front.x, y=view.front.y, name="Pareto front", mode="lines", connectgaps=False,
                    line={"color": view.front.color, "shape": "hv", "width": 1.5}, hoverinfo="skip")]
    for label, color in view.legend:
        pts = [p for p in view.points if p[3] == label]
        data.append(scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=label, mode="markers",
                            marker={"color": color, "size": 9, "line": {"color": "white", "width": 1}},
                            customdata=[p[2] for p in pts],
                            hovertemplate=f"{view.axis_title} %{{x:.4g}}<br>{a.metric} %{{y:.4f}}<br>"
                                          f"trial %{{customdata}} ({label})<extra></extra>"))
    on_front = [(x, y) for x, y in zip(view.front.x, view.front.y) if y is not None]
    data.append(scatter(x=[p[0] for p in on_front], y=[p[1] for p in on_front], name="on the front", mode="markers",
                        marker={"color": "rgba(0,0,0,0)", "size": 15, "line": {"color": "#222222", "width": 1.5}},
                        hoverinfo="skip"))
    data += beyond_traces(view.beyond, a.metric)
    return figure(data, title(f"pareto-{cost}", a), {"type": "log", **axis_title(view.axis_title)},
                  {**axis_title(a.metric), **y_range(view.y_range)})


def steps_to_target(a: StudyAnalysis) -> Figure:
    data = []
    pts = a.steps_to_target
    if pts:
        xs, (b0, s0) = [p[0] for p in pts], pts[0][:2]
        data.append(scatter(x=xs, y=[p[1] for p in pts], name="updates to target", mode="lines+markers",
                            customdata=[p[2] for p in pts],
                            hovertemplate="B=%{x}<br>%{y} updates<br>trial %{customdata}<extra></extra>"))
        data.append(scatter(x=xs, y=[s0 * b0 / b for b in xs], name="perfect scaling (updates ~ 1/B)",
                            mode="lines", line={"dash": "dash", "color": "#7f7f7f"}))
        data.append(scatter(x=xs, y=[s0 for _ in xs], name="no benefit (updates constant)",
                            mode="lines", line={"dash": "dot", "color": "#bbbbbb"}))
    return figure(data, title("steps-to-target", a), batch_axis([p[0] for p in pts]),
                  {"type": "log", **axis_title("updates to reach the target")})


def lr_scaling(a: StudyAnalysis) -> Figure:
    fit = a.lr_fit
    data = [scatter(x=fit.batch_sizes, y=fit.lrs, mode="markers", name="good trials' mean LR per batch size",
                    marker={"size": 10}, customdata=fit.trial_numbers,
                    hovertemplate="B=%{x}<br>lr=%{y:.4g}<br>best trial %{customdata}<extra></extra>")]
    if fit.slope is not None:
        lo, hi = min(fit.batch_sizes), max(fit.batch_sizes)
        xs = [lo * (hi / lo) ** (i / 40) for i in range(41)]
        mid = math.sqrt(lo * hi)  # lines pivot at the geometric middle of the fitted range
        centre = math.exp(fit.intercept) * mid ** fit.slope
        label = f"fit: B^{fit.slope:.2f}" + ("" if fit.half_width is None else f" +/- {fit.half_width:.2f}")
        data.append(scatter(x=xs, y=[centre * (x / mid) ** fit.slope for x in xs], mode="lines", name=label,
                            line={"color": "#d62728"}))
        if fit.half_width is not None:
            for sign in (1, -1):
                s = fit.slope + sign * fit.half_width
                data.append(scatter(x=xs, y=[centre * (x / mid) ** s for x in xs], mode="lines",
                                    name=f"{100 * fit.confidence:.0f}% CI of the slope", legendgroup="ci",
                                    line={"color": "#d62728", "dash": "dot", "width": 1}, showlegend=sign > 0))
        for rule, slope in RULE_SLOPES.items():
            data.append(scatter(x=xs, y=[centre * (x / mid) ** slope for x in xs], mode="lines",
                                name=f"{rule} rule (B^{slope:g})", visible="legendonly",
                                line={"color": "#aaaaaa", "width": 1, "dash": "dash"}))
    return figure(data, title("lr-scaling", a), batch_axis(fit.batch_sizes),
                  {"type": "log", **axis_title("effective peak LR")})


def importances(a: StudyAnalysis) -> Figure:
    items = sorted(a.importances.items(), key=lambda kv: kv[1])
    data = [{"type": "bar", "orientation": "h", "x": [v for _, v in items], "y": [k for k, _ in items],
             "name": "importance"}]
    return figure(data, title("importances", a), axis_title("importance"), {})


def budget_plan(a: StudyAnalysis, plan: list[dict]) -> Figure:
    labels = [str(r["batch_size"]) for r in plan]
    data, layout, annotations = [], {}, []
    for i, key in enumerate(("updates", "examples", "epochs")):
        suffix = "" if i == 0 else str(i + 1)
        values = [r.get(key) for r in plan]
        if all(isinstance(v, (int, float)) for v in values):
            data.append({"type": "bar", "x": labels, "y": values, "name": key, "marker": {"color": BARS[i]},
                         "xaxis": f"x{suffix}", "yaxis": f"y{suffix}"})
        domain = [i / 3 + 0.03, (i + 1) / 3 - 0.03]
        layout[f"xaxis{suffix}"] = {**GRID, "domain": domain, "type": "category", **axis_title("batch size"),
                                    "anchor": f"y{suffix}"}
        layout[f"yaxis{suffix}"] = {**GRID, "anchor": f"x{suffix}"}
        annotations.append({"text": key, "x": sum(domain) / 2, "y": 1.04, "xref": "paper", "yref": "paper",
                            "showarrow": False, "xanchor": "center"})
    fig = figure(data, title("budget-plan", a), {}, {}, annotations=annotations)
    fig["layout"].update(layout)
    return fig


def noise_scale(a: StudyAnalysis) -> Figure:
    """Each trial's B_simple curve (log scale) in its batch size's colour, its at-target point marked."""
    curves = a.noise.curves if a.noise else []
    colors = batch_colors([c.batch_size for c in curves if c.batch_size is not None] or [0])
    data = []
    for c in curves:
        color = batch_color(c.batch_size, colors)
        data.append(scatter(x=c.examples, y=c.values, mode="lines+markers", name=f"trial {c.trial} (B={c.batch_size})",
                            line={"color": color}, marker={"size": 4, "color": color},
                            hovertemplate=f"trial {c.trial}, B={c.batch_size}<br>%{{x:,.0f}} examples<br>"
                                          "B_simple %{y:.4g}<extra></extra>"))
        if c.at_target is not None:
            data.append(scatter(x=[c.examples[c.reached]], y=[c.at_target], mode="markers", showlegend=False,
                                hoverinfo="skip",
                                marker={"size": 11, "color": "rgba(0,0,0,0)", "line": {"color": color, "width": 2}}))
    return figure(data, title("noise-scale", a), axis_title("examples seen"),
                  {"type": "log", **axis_title("B_simple (gradient noise scale)")},
                  annotations=note_annotation(a.noise.headline() if a.noise else ""))


def horizons(a: StudyAnalysis) -> Figure:
    """The best-so-far frontier: the best value at each horizon or a shorter one, against what the
    sweep spent to answer every horizon up to it; each horizon's own best marked."""
    pts = a.horizons
    xs = [p.spent for p in pts]
    labels = [f"{length_text(p.length)} ({p.fraction})" for p in pts]
    data = [scatter(x=xs, y=[p.so_far for p in pts], name="best so far", mode="lines",
                    line={"shape": "hv", "color": "#1f77b4"}, hoverinfo="skip"),
            scatter(x=xs, y=[p.best for p in pts], name="best at the horizon", mode="markers+text", text=labels,
                    textposition="bottom right", marker={"size": 10, "color": "#1f77b4"},
                    customdata=[[p.trial, p.length] for p in pts],
                    hovertemplate=f"%{{x:,.0f}} {a.budget_unit} spent<br>{a.metric} %{{y:.4f}}<br>"
                                  "horizon %{customdata[1]:g}, trial %{customdata[0]}<extra></extra>")]
    return figure(data, title("horizons", a), {"type": "log", **axis_title(f"{a.budget_unit} spent by the sweep")},
                  axis_title(f"best {a.metric}"))


def build_figures(a: StudyAnalysis, plan: list[dict] | None) -> dict[str, Figure]:
    figures = {
        "best-by-batch-size": best_by_batch_size(a, plan),
        "lr-scaling": lr_scaling(a),
        "steps-to-target": steps_to_target(a),
        "learning-curves": learning_curves(a, plan),
        "pareto-examples": pareto(a, "examples", plan),
        "pareto-seconds": pareto(a, "seconds", plan),
    }
    if a.importances:
        figures["importances"] = importances(a)
    if plan:
        figures["budget-plan"] = budget_plan(a, plan)
    if a.noise is not None:
        figures["noise-scale"] = noise_scale(a)
    if a.horizons:
        figures["horizons"] = horizons(a)
    return figures


def to_json(fig: Figure) -> str:
    return json.dumps(fig, allow_nan=False, default=float)


def write_html(path, a: StudyAnalysis, figures: dict[str, Figure], summary_html: str) -> None:
    import plotly.io as pio

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{a.study_name}: sweep report</title>"
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
             "table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
             "</style></head><body>", f"<h1>{a.study_name}: sweep report</h1>", summary_html]
    for i, (key, fig) in enumerate(figures.items()):
        parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), div_id=key, validate=False))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")


def figures_of(analysis: StudyAnalysis, config: SweepConfig | None, n_train: int | None,
               tokens_per_example: int | None = None) -> dict[str, Figure]:
    plan = plan_rows(config, n_train, tokens_per_example) if config is not None and n_train else None
    return build_figures(analysis, plan)
