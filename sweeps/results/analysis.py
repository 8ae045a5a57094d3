"""What a finished sweep says: the numbers behind the report's figures, read from the study alone.

Everything here uses the trials' recorded user attributes (batch_size, lr, coupling, updates, ...)
and learning curves, so a report needs no training and no task code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from sweeps.trial.record import StudyUnits, TrialRecord

RULE_SLOPES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}


@dataclass
class LrFit:
    """log(best effective LR) = intercept + slope * log(batch size), over the best trial of each B."""

    batch_sizes: list[int]
    lrs: list[float]
    trial_numbers: list[int]
    slope: float | None = None
    intercept: float | None = None
    half_width: float | None = None  # of the confidence interval of the slope (None: too few points)
    confidence: float = 0.95

    @property
    def nearest_rule(self) -> str | None:
        if self.slope is None:
            return None
        return min(RULE_SLOPES, key=lambda rule: abs(RULE_SLOPES[rule] - self.slope))

    def sentence(self) -> str:
        if self.slope is None:
            return "LR scaling: too few batch sizes with a finished trial to fit a slope"
        ci = "" if self.half_width is None else f" +/- {self.half_width:.2f}"
        conf = "" if self.half_width is None else f" ({100 * self.confidence:.0f}% CI"
        return (f"this task's best LR scales as B^{self.slope:.2f}{ci}{conf}, {len(self.batch_sizes)} batch sizes"
                f"{')' if conf else ''}: closest coupling rule {self.nearest_rule}")


def fit_lr_scaling(points: list[tuple[int, float, int]], confidence: float = 0.95) -> LrFit:
    """`points`: (batch size, effective LR, trial number) of the best trial at each batch size."""
    points = sorted(points)
    fit = LrFit([p[0] for p in points], [p[1] for p in points], [p[2] for p in points], confidence=confidence)
    if len(points) < 2:
        return fit
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    result = stats.linregress(x, y)
    fit.slope, fit.intercept = float(result.slope), float(result.intercept)
    if len(points) >= 3:
        fit.half_width = float(stats.t.ppf(0.5 + confidence / 2, len(points) - 2) * result.stderr)
    return fit


@dataclass
class Curve:
    number: int
    state: str
    batch_size: int | None
    coupling: str | None
    steps: list[int]
    values: list[float]


@dataclass
class StudyAnalysis:
    study_name: str
    metric: str
    maximize: bool
    budget_unit: str
    step_unit: str
    complete: list[FrozenTrial]
    curves: list[Curve]
    best_by_batch: dict[str, list[tuple[int, float, int]]]  # coupling -> (B, best value, trial)
    lr_fit: LrFit
    target: float | None
    target_quantile: float
    steps_to_target: list[tuple[int, int, int]]  # (B, updates to first reach target, trial)
    importances: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def best_table(self, k: int = 10) -> list[dict]:
        rows = []
        for rank, t in enumerate(self.complete[:k], 1):
            r, p = TrialRecord.of(t), t.params
            rows.append({
                "rank": rank, "trial": t.number, self.metric: t.value, "batch_size": r.batch_size,
                "coupling": coupling_of(t, r, None), "base_lr": p.get("base_lr"), "lr": r.lr,
                "warmup": p.get("warmup_fraction"), "epochs": r.epochs_completed,
                "updates": r.updates, "stop": r.stop_reason,
            })
        return rows


def coupling_of(trial: FrozenTrial, record: TrialRecord, default: object) -> object:
    """The coupling rule the trial recorded, else its searched one, else `default`."""
    return record.coupling if record.coupling is not None else trial.params.get("coupling", default)


def best_of(trials: list[FrozenTrial], maximize: bool) -> FrozenTrial:
    return max(trials, key=lambda t: t.value) if maximize else min(trials, key=lambda t: t.value)


def updates_per_step(trial: FrozenTrial, step_unit: str) -> float | None:
    """Convert a report step (budget units consumed) into optimizer updates for this trial."""
    return TrialRecord.of(trial).updates_per_step(step_unit)


def reached(value: float, target: float, maximize: bool) -> bool:
    return value >= target if maximize else value <= target


def steps_to_target(trials: list[FrozenTrial], target: float, maximize: bool,
                    step_unit: str) -> list[tuple[int, int, int]]:
    """Per batch size, the fewest updates any of its trials needed to first reach `target`."""
    best: dict[int, tuple[int, int]] = {}
    for t in trials:
        record = TrialRecord.of(t)
        batch, ratio = record.batch_size, record.updates_per_step(step_unit)
        if batch is None or ratio is None:
            continue
        first = next((s for s, v in sorted(t.intermediate_values.items())
                      if math.isfinite(v) and reached(v, target, maximize)), None)
        if first is None:
            continue
        updates = max(1, round(first * ratio))
        if batch not in best or updates < best[batch][0]:
            best[batch] = (updates, t.number)
    return [(b, u, n) for b, (u, n) in sorted(best.items())]


def analyse(study: optuna.Study, target: float | None = None, target_quantile: float = 0.9,
            with_importances: bool = True) -> StudyAnalysis:
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value)]
    complete.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
    metric = (study.metric_names or ["value"])[0]
    units = StudyUnits.of(study)
    step_unit = units.step_unit
    records = {t.number: TrialRecord.of(t) for t in trials}

    curves = [Curve(t.number, t.state.name.lower(), records[t.number].batch_size, records[t.number].coupling,
                    sorted(t.intermediate_values), [t.intermediate_values[s] for s in sorted(t.intermediate_values)])
              for t in trials if t.intermediate_values]

    by_batch: dict[str, dict[int, FrozenTrial]] = {}
    best_at: dict[int, FrozenTrial] = {}
    for t in complete:  # best first: the first trial seen for a key is its best
        b, rule = records[t.number].batch_size, str(coupling_of(t, records[t.number], "-"))
        if b is None:
            continue
        by_batch.setdefault(rule, {}).setdefault(b, t)
        best_at.setdefault(b, t)
    best_by_batch = {rule: [(b, t.value, t.number) for b, t in sorted(d.items())]
                     for rule, d in sorted(by_batch.items())}
    lr_fit = fit_lr_scaling([(b, float(records[t.number].lr), t.number) for b, t in best_at.items()
                             if records[t.number].lr])

    finished_values = [t.value for t in complete]
    if target is None and finished_values:
        q = target_quantile if maximize else 1 - target_quantile
        target = float(np.quantile(finished_values, q))
    reaching = steps_to_target(complete + [t for t in trials if t.state == TrialState.PRUNED],
                               target, maximize, step_unit) if target is not None else []

    importances: dict[str, float] = {}
    if with_importances and len(complete) >= 2:
        try:
            importances = dict(optuna.importance.get_param_importances(study))
        except (RuntimeError, ValueError, ZeroDivisionError):
            importances = {}
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    return StudyAnalysis(study.study_name, metric, maximize, units.budget_unit,
                         step_unit, complete, curves, best_by_batch, lr_fit, target, target_quantile, reaching,
                         importances, counts)
