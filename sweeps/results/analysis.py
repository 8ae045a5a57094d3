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

from sweeps.confirmation.confirmed import Confirmed, confirmed_of
from sweeps.results.critical import CriticalFit, fit_critical, reaches
from sweeps.results.horizons import ComputePoint, best_against_compute
from sweeps.results.lr_advice import RULE_SLOPES, LrFit, LrPoint, default_tolerance, fit_lr_scaling
from sweeps.results.noise import NoiseEstimate, estimate
from sweeps.trial.record import StudyUnits, TrialRecord

__all__ = ["RULE_SLOPES", "LrFit", "StudyAnalysis", "analyse"]

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
    steps_to_target: list[tuple[int, int, int]]  # (B, updates to first reach target, interpolated; trial)
    importances: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    tolerance: float = 0.0  # of a good trial, in metric units
    critical: CriticalFit | None = None  # B_crit from steps to target (None: no target)
    noise: NoiseEstimate | None = None  # B_crit from the trials' noise scale (None: none measured it)
    throughput: dict[int, float] = field(default_factory=dict)  # B -> median examples/s of its complete trials
    confirmed: list[Confirmed] = field(default_factory=list)  # `sweeps confirm`'s runs, per configuration
    # with budget.horizons: per horizon, its best value and what the sweep spent to answer it
    horizons: list[ComputePoint] = field(default_factory=list)

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


def throughput_by_batch(trials: list[FrozenTrial]) -> dict[int, float]:
    """Median examples per second of each batch size's trials: what a batch size costs in seconds."""
    rates: dict[int, list[float]] = {}
    for t in trials:
        r = TrialRecord.of(t)
        if r.batch_size is not None and r.examples_per_second:
            rates.setdefault(r.batch_size, []).append(float(r.examples_per_second))
    return {b: float(np.median(v)) for b, v in sorted(rates.items())}


def analyse(study: optuna.Study, target: float | None = None, target_quantile: float = 0.9,
            with_importances: bool = True, tolerance: float | None = None) -> StudyAnalysis:
    """Everything the report says about a study. `tolerance`: how far below its batch size's best a
    trial may be and still count as good (metric units; None: 1% of the range of finished values)."""
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
    for t in complete:  # best first: the first trial seen for a key is its best
        b, rule = records[t.number].batch_size, str(coupling_of(t, records[t.number], "-"))
        if b is None:
            continue
        by_batch.setdefault(rule, {}).setdefault(b, t)
    best_by_batch = {rule: [(b, t.value, t.number) for b, t in sorted(d.items())]
                     for rule, d in sorted(by_batch.items())}
    finished_values = [t.value for t in complete]
    tolerance = default_tolerance(finished_values) if tolerance is None else tolerance
    lr_fit = fit_lr_scaling([LrPoint(r.batch_size, float(r.lr), t.value, t.number) for t in complete
                             if (r := records[t.number]).batch_size is not None and r.lr],
                            maximize=maximize, tolerance=tolerance)
    if target is None and finished_values:
        q = target_quantile if maximize else 1 - target_quantile
        target = float(np.quantile(finished_values, q))
    critical = None
    if target is not None:
        finished = complete + [t for t in trials if t.state == TrialState.PRUNED]
        reached = reaches(finished, target, maximize, step_unit)
        tried = {records[t.number].batch_size for t in finished} - {None} - set(reached)
        critical = fit_critical(reached, target, sorted(tried))
    reaching = [(b, max(1, round(r.updates)), r.trial) for b, r in critical.reached.items()] if critical else []

    importances: dict[str, float] = {}
    if with_importances and len(complete) >= 2:
        try:
            importances = dict(optuna.importance.get_param_importances(study))
        except (RuntimeError, ValueError, ZeroDivisionError):
            importances = {}
    counts = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    return StudyAnalysis(study.study_name, metric, maximize, units.budget_unit,
                         step_unit, complete, curves, best_by_batch, lr_fit, target, target_quantile, reaching,
                         importances, counts, tolerance, critical, estimate(complete, target, maximize, step_unit),
                         throughput_by_batch(complete), confirmed_of(study),
                         best_against_compute(trials, maximize, units.budget_unit))
