"""The analysis: compute to target (examples and seconds until a value first reaches the target
within the total compute C), medians and interquartile ranges over seeds, the tables, the paired
speedups (baseline / service, geometric mean over tasks) and the figure's panels."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .methods import BASELINES
from .records import TrialRecord, charged
from .tasks import TaskSpec


@dataclass
class Hit:
    examples: float  # math.inf when the target was not reached within the total compute
    seconds: float
    best: float | None  # best value seen within the total compute

    @property
    def reached(self) -> bool:
        return math.isfinite(self.examples)


def compute_to_target(trials: Sequence[TrialRecord], target: float, total: float, maximize: bool = True) -> Hit:
    """Examples (and seconds) spent, in trial order, until a value first reaches `target`.

    Only compute within `total` counts: an evaluation after the method's first `total` examples is
    ignored, and so is every later trial. `best` is the best value seen within `total`.
    """
    spent = 0
    best = None
    hit = None
    for trial in trials:
        if spent >= total:
            break
        for ev in sorted(trial.evaluations, key=lambda e: e.examples):
            if spent + ev.examples > total:
                break
            if not math.isfinite(ev.value):  # a diverged evaluation (NaN or inf) never counts as best
                continue
            if best is None or (ev.value > best if maximize else ev.value < best):
                best = ev.value
            if hit is None and ((ev.value >= target) if maximize else (ev.value <= target)):
                hit = (spent + ev.examples, ev.seconds)
        spent += trial.examples
    return Hit(*(hit or (math.inf, math.inf)), best)


def median_of(values: list[float]) -> float:
    return statistics.median(values)  # inf (not reached) sorts last, so the median is censored too


def spread(values: list[float], unit: str = "") -> str:
    """Interquartile range over seeds (n/r: not reached within the total compute)."""
    if len(values) < 2:
        return "-"
    q = sorted(values)
    k = len(q) // 4
    return f"{fmt(q[k], unit)}-{fmt(q[-1 - k], unit)}"


def fmt(v: float, unit: str = "") -> str:
    if not math.isfinite(v):
        return "n/r"
    if unit == "s":
        return f"{v:.1f}"
    return f"{v / 1000:.0f}k" if v >= 10_000 else f"{v:.0f}"


@dataclass
class Cell:
    """One method on one task: each seed's trial records and wall seconds; `charge` (issue 30):
    the training examples each evaluation is charged, applied to the records here; `seeds`: the
    run seed of each entry of `runs` (for pairing by seed), where known."""

    runs: list[tuple[list[TrialRecord], float]] = field(default_factory=list)
    charge: float = 0.0
    seeds: list[int] = field(default_factory=list)

    def hits(self, target: float, total: float, maximize: bool = True) -> list[Hit]:
        return [compute_to_target(charged(records, self.charge), target, total, maximize) for records, _ in self.runs]

    def by_seed(self, target: float, total: float, maximize: bool = True) -> dict[int, float]:
        """Compute to target per run seed (inf: not reached within `total`)."""
        seeds = self.seeds if len(self.seeds) == len(self.runs) else list(range(len(self.runs)))
        return {seed: hit.examples for seed, hit in zip(seeds, self.hits(target, total, maximize))}


def target_for(reference: dict, name: str, spec: TaskSpec, margin: float) -> float:
    """The reference value, worse by `margin` in the task's direction."""
    best = reference[name]["best"]
    return best - margin if spec.maximize else best + margin


def with_pooled_best(reference: dict, cells: dict[tuple[str, str], Cell], specs: dict[str, TaskSpec]) -> dict:
    """A task without a reference (char_lm) takes the best value any method and seed reached within
    its total compute C in these runs: the target is relative to the best found."""
    out = dict(reference)
    for name, spec in specs.items():
        if name in out:
            continue
        bests = [h.best for (task, _), cell in cells.items() if task == name
                 for h in cell.hits(math.nan, spec.total, spec.maximize) if h.best is not None]
        if bests:
            out[name] = {"best": max(bests) if spec.maximize else min(bests), "pooled": True}
    return out


def censored_median(values: list[float], total: float) -> float:
    """The median, with not-reached seeds counted as the whole budget (a lower bound on their cost)."""
    return median_of([min(v, total) for v in values])


def best_within(cell: Cell, total: float, maximize: bool) -> list[float]:
    return [h.best for h in cell.hits(math.nan, total, maximize) if h.best is not None]


def value_spread(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    q = sorted(values)
    k = len(q) // 4
    return f"{q[k]:.4f}-{q[-1 - k]:.4f}"


def print_table(cells: dict[tuple[str, str], Cell], specs: dict[str, TaskSpec], reference: dict,
                labels: Sequence[str], margins: dict[str, float], title: str) -> None:
    """Compute to target at the task's margin (a task without one is left out), and the best value
    within fixed compute (C/4 and C), medians with the interquartile range over seeds."""
    print()
    print(f"compute to target, {title}; IQR over seeds; n/r = not reached within C")
    print(f"{'task':16s} {'method':22s} {'reached':>7s} {'examples (median)':>17s} {'IQR':>13s} "
          f"{'seconds (median)':>16s} {'IQR':>11s} {'best@C/4':>8s} {'best@C (median)':>15s} {'IQR':>15s}")
    for name, spec in specs.items():
        if margins.get(name) is None:
            print(f"{name:16s} (no {title} for this task: see --noise)")
            continue
        margin = margins[name]
        target = target_for(reference, name, spec, margin)
        for label in labels:
            if (name, label) not in cells:
                continue
            cell = cells[(name, label)]
            hits = cell.hits(target, spec.total, spec.maximize)
            examples, seconds = [h.examples for h in hits], [h.seconds for h in hits]
            bests = best_within(cell, spec.total, spec.maximize)
            early = best_within(cell, spec.total / 4, spec.maximize)
            print(f"{name:16s} {label:22s} {sum(h.reached for h in hits):>3d}/{len(hits):<3d} "
                  f"{fmt(median_of(examples)):>17s} {spread(examples):>13s} "
                  f"{fmt(median_of(seconds), 's'):>16s} {spread(seconds, 's'):>11s} "
                  f"{statistics.median(early) if early else float('nan'):>8.4f} "
                  f"{statistics.median(bests) if bests else float('nan'):>15.4f} {value_spread(bests):>15s}")
        what = {"seed_mean": f"reference: mean best of {reference[name].get('seeds')} seeds of the grid's best config",
                "grid_max": "reference: grid maximum, one seed"}.get(reference[name].get("protocol"), "reference")
        what = "best of all runs within C" if reference[name].get("pooled") else what
        print(f"{'':16s} {spec.metric} target {target:.4f} ({what} {reference[name]['best']:.4f} "
              f"{'-' if spec.maximize else '+'} {margin:.4g}), "
              f"budget C = {spec.total} examples = {spec.full_trials} trials of {spec.per_trial}")


def speedups(cells, specs, reference: dict, margins: dict[str, float], service_label: str = "service",
             log=print, against: Sequence[str] = BASELINES) -> dict[str, float]:
    """Per baseline (or `against`: the variants of --compare, each the service without one of its
    mechanisms): the geometric mean over tasks of median(examples to target of the baseline) /
    median(of the service), misses counted as C; each task's ratio is logged beside it."""
    names = [n for n, s in specs.items() if margins.get(n) is not None and (n, service_label) in cells]
    geo = {}
    for base in against:
        if not names or not all((n, base) in cells for n in names):
            continue
        ratios = []
        for name in names:
            spec = specs[name]
            target = target_for(reference, name, spec, margins[name])
            ours = censored_median([h.examples for h in cells[(name, service_label)].hits(
                target, spec.total, spec.maximize)], spec.total)
            theirs = censored_median([h.examples for h in cells[(name, base)].hits(
                target, spec.total, spec.maximize)], spec.total)
            ratios.append((name, theirs / ours, theirs, ours))
        geo[base] = math.exp(sum(math.log(r) for _, r, _, _ in ratios) / len(ratios))
        log(f"# {base} / service, median examples to target: "
            + "; ".join(f"{n} {fmt(a)}/{fmt(b)} = {r:.2f}" for n, r, a, b in ratios)
            + f"; geometric mean {geo[base]:.2f}")
    return geo


def figure_path(path: str, group: str) -> str:
    stem = path[:-4] if path.endswith(".png") else path
    return f"{stem}_{group.replace('-', '_')}.png"


def draw_figure(cells, specs: dict[str, TaskSpec], reference: dict, labels: Sequence[str],
                margin_sets: list[tuple[str, dict]], path: str, title: str, emphasis: str) -> None:
    """figure.draw over these cells: the tables' runs, drawn."""
    from .figure import draw  # matplotlib only when a figure is asked for

    panels = []
    for name, spec in specs.items():
        targets = {t: target_for(reference, name, spec, m[name]) for t, m in margin_sets
                   if m.get(name) is not None and name in reference}
        runs = {label: [records for records, _ in cells[(name, label)].runs]
                for label in labels if (name, label) in cells}
        panels.append({"name": name, "metric": spec.metric, "maximize": spec.maximize, "total": spec.total,
                       "cells": runs, "targets": targets})
    draw(panels, labels, lambda records, x, maximize: compute_to_target(records, math.nan, x, maximize).best,
         path, title, emphasis)



# --- issue 30: the protocol's figures (docs/search_efficiency.md, "Issue 30: protocol") ----------

BOOTSTRAP = 2000  # resamples of the seeds for the 90% intervals
SHARE_LEVELS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # fractions of C where the share of seeds reaching is read


def paired(ours: dict[int, float], theirs: dict[int, float]) -> list[tuple[float, float]]:
    """(service, baseline) compute to target on the seeds both ran, in seed order."""
    return [(ours[s], theirs[s]) for s in sorted(set(ours) & set(theirs))]


def p_faster(pairs: list[tuple[float, float]]) -> float:
    """P(service faster): the share of seeds on which the service reaches the target with less
    compute than the baseline (a miss is slower than any hit; a tie, both misses included, counts 1/2)."""
    if not pairs:
        return math.nan
    return sum(1.0 if a < b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def median_ratio(pairs: list[tuple[float, float]], total: float) -> float:
    """median(baseline) / median(service) over the seeds, misses counted as C (so a ratio with
    many baseline misses is a lower bound, and with many service misses an upper bound)."""
    ours = statistics.median(min(a, total) for a, _ in pairs)
    theirs = statistics.median(min(b, total) for _, b in pairs)
    return theirs / ours


def bootstrap_ratio(per_task: list[tuple[list[tuple[float, float]], float]], rng: random.Random,
                    n: int = BOOTSTRAP) -> tuple[float, float, float]:
    """The geometric mean over tasks of the median ratios, and its 90% interval: the seeds of each
    task resampled with replacement, pairs kept together (the 5th and 95th percentiles)."""
    def geo(samples):
        logs = [math.log(median_ratio(pairs, total)) for pairs, total in samples]
        return math.exp(sum(logs) / len(logs))

    point = geo(per_task)
    draws = sorted(geo([([rng.choice(pairs) for _ in pairs], total) for pairs, total in per_task]) for _ in range(n))
    return point, draws[int(0.05 * n)], draws[min(n - 1, int(0.95 * n))]


def share_reached(costs: list[float], total: float, levels: Sequence[float] = SHARE_LEVELS) -> list[float]:
    """The share of seeds that reached the target within each fraction of C (misses never do)."""
    return [sum(c <= level * total for c in costs) / len(costs) if costs else math.nan for level in levels]


def mean_ranks(medians: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per task the methods ranked by censored median compute to target (1 best, ties share the
    mean rank); the mean over tasks."""
    ranks: dict[str, list[float]] = {}
    for per_method in medians.values():
        ordered = sorted(per_method.items(), key=lambda kv: kv[1])
        i = 0
        while i < len(ordered):
            j = i
            while j + 1 < len(ordered) and ordered[j + 1][1] == ordered[i][1]:
                j += 1
            for method, _ in ordered[i : j + 1]:
                ranks.setdefault(method, []).append((i + j) / 2 + 1)
            i = j + 1
    return {m: statistics.mean(r) for m, r in ranks.items()}


def protocol_report(cells: dict[tuple[str, str], Cell], specs: dict[str, TaskSpec], reference: dict,
                    margins: dict[str, float | None], title: str, service: str, baselines: Sequence[str],
                    log=print, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Issue 30's figures at one margin: per task and method the share of seeds reaching the target
    at C/16 .. C and the censored median; per baseline P(service faster) and the median ratio with
    its bootstrap 90% interval, per task and over tasks (geometric mean); the mean rank of every
    method across tasks. Returns {baseline: (ratio, low, high)} over tasks."""
    rng = random.Random(seed)
    names = [n for n in specs if margins.get(n) is not None and n in reference and (n, service) in cells]
    labels = [service] + [b for b in baselines if all((n, b) in cells for n in names)]
    log(f"\n# issue 30 protocol, {title}: share of seeds reaching the target within "
        + ", ".join(f"C/{round(1 / f)}" if f < 1 else "C" for f in SHARE_LEVELS) + "; median examples to target "
        "(misses as C)")
    costs: dict[tuple[str, str], dict[int, float]] = {}
    medians: dict[str, dict[str, float]] = {}
    for name in names:
        spec = specs[name]
        target = target_for(reference, name, spec, margins[name])
        log(f"{name} (target {target:.4f}, C {spec.total:.0f})")
        for label in labels:
            costs[(name, label)] = cells[(name, label)].by_seed(target, spec.total, spec.maximize)
            values = list(costs[(name, label)].values())
            medians.setdefault(name, {})[label] = censored_median(values, spec.total)
            shares = " ".join(f"{x:.2f}" for x in share_reached(values, spec.total))
            log(f"  {label:16s} seeds {len(values):2d} share {shares} median {fmt(medians[name][label])}")
    out = {}
    for base in labels[1:]:
        per_task = []
        for name in names:
            pairs = paired(costs[(name, service)], costs[(name, base)])
            if not pairs:
                continue
            one = bootstrap_ratio([(pairs, specs[name].total)], rng)
            log(f"# {base} / {service} {name}: P(service faster) {p_faster(pairs):.2f}, median ratio "
                f"{one[0]:.2f} [90% {one[1]:.2f}, {one[2]:.2f}] over {len(pairs)} paired seeds")
            per_task.append((pairs, specs[name].total))
        if per_task:
            out[base] = bootstrap_ratio(per_task, rng)
            everything = [pair for pairs, _ in per_task for pair in pairs]
            log(f"{title}: vs {base}: ratio {out[base][0]:.2f} [90% {out[base][1]:.2f}, {out[base][2]:.2f}] "
                f"(geometric mean over {len(per_task)} tasks), P(service faster) {p_faster(everything):.2f}")
    if medians:
        ranks = mean_ranks(medians)
        log(f"{title}: mean rank over {len(medians)} tasks: "
            + ", ".join(f"{m} {r:.2f}" for m, r in sorted(ranks.items(), key=lambda kv: kv[1])))
    return out


def best_baseline_ratio(cells: dict[tuple[str, str], Cell], specs: dict[str, TaskSpec], reference: dict,
                        margins: dict[str, float | None], service: str, baselines: Sequence[str],
                        rng: random.Random) -> tuple[dict[str, str], tuple[float, float, float]] | None:
    """Issue 30, part 4's selection statistic at one margin: per task the best baseline (the lowest
    censored median compute to target among `baselines`; a tie goes to the first in their order),
    paired by seed with the service; the geometric mean over tasks of median(best baseline) /
    median(service) with its bootstrap 90% interval (`bootstrap_ratio`; the best baseline is chosen
    once, on all seeds, not again in each resample). None when a task lacks the service or a baseline."""
    names = [n for n in specs if margins.get(n) is not None and n in reference]
    best_of: dict[str, str] = {}
    per_task = []
    for name in names:
        spec = specs[name]
        present = [b for b in baselines if (name, b) in cells]
        if (name, service) not in cells or not present:
            return None
        target = target_for(reference, name, spec, margins[name])
        costs = {label: cells[(name, label)].by_seed(target, spec.total, spec.maximize)
                 for label in [service, *present]}
        best_of[name] = min(present, key=lambda b: censored_median(list(costs[b].values()), spec.total))
        per_task.append((paired(costs[service], costs[best_of[name]]), spec.total))
    if not per_task:
        return None
    return best_of, bootstrap_ratio(per_task, rng)


def draw_share_figure(cells: dict[tuple[str, str], Cell], specs: dict[str, TaskSpec], reference: dict,
                      labels: Sequence[str], margin_sets: list[tuple[str, dict]], path: str, title: str,
                      emphasis: str) -> None:
    """figure.draw_share over these cells: each seed's charged compute to target, per task and margin."""
    from .figure import draw_share  # matplotlib only when a figure is asked for

    panels = []
    for name, spec in specs.items():
        for margin_title, margins in margin_sets:
            if margins.get(name) is None or name not in reference:
                continue
            target = target_for(reference, name, spec, margins[name])
            costs = {label: [h.examples for h in cells[(name, label)].hits(target, spec.total, spec.maximize)]
                     for label in labels if (name, label) in cells}
            panels.append({"task": name, "margin": margin_title, "total": spec.total, "costs": costs})
    if panels:
        draw_share(panels, labels, path, title, emphasis)
