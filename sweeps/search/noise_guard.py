"""A pruning guard: do not prune a trial whose rung value is within the noise of the cut.

Opt-in (`pruner: {noise_margin: 2.0}`), not a default: on the benchmark's development tasks it
was slower to the strict target than the pruner alone (issue 17, docs/search_efficiency.md).

With a small validation set the standard error of a rung value (sd / sqrt(n_val), measured by
the trainer with `objectives.task.per_example_metric`) can be as large as the gaps a pruner acts
on. When the pruner says prune at a step, the guard finds the value that decides the cut at that
step: among the trials that reported a value at the same step (this one included), the one at
the kept fraction counted from the best, as Optuna's successive halving counts it
(`len // eta - 1`, at least the best). The trial is kept when it trails that value by no more
than `noise_margin` x sqrt(se_trial^2 + se_cut^2).

Two forms, one rule (`trails_within_noise`):

- `NoiseGuard(pruner, noise_margin, keep_fraction)` wraps any Optuna pruner (median: 0.5,
  successive halving: 1 / eta). Its cut is over every trial that reported at the step.
- `HyperbandNoiseGuard(..., noise_margin)` is a `HyperbandPruner`, so Optuna's samplers still
  see only the trial's bracket (`optuna.pruners._filter_study` tests `isinstance`; a wrapper
  would hide it), and its cut is over the trial's own bracket, Hyperband's own comparison.

A step whose standard error is unknown (a metric with no per-example values) leaves the pruner's
decision as it is; a competitor without one is taken to have this trial's.

The standard errors travel as trial system attributes (`record.value_se_key(step)`), written by
the bookkeeper with the report (`sweeps.loop.bookkeeping.Books.decide`), so training does no I/O for them.
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner, HyperbandPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from storage.optuna_private import hyperband_bracket_study
from sweeps.trial.record import value_se_key


def checked_margin(owner: str, noise_margin: float) -> float:
    if (isinstance(noise_margin, bool) or not isinstance(noise_margin, int | float)
            or not math.isfinite(noise_margin) or noise_margin <= 0):
        raise ValueError(f"{owner} noise_margin must be a finite number > 0 (got {noise_margin!r})")
    return float(noise_margin)


def whole_number(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def trails_within_noise(study: optuna.Study, trial: FrozenTrial, noise_margin: float, keep_fraction: float) -> bool:
    """True when the trial's last value trails the cut at its step by no more than the margin's
    worth of the combined standard error; False when it is outside, or the noise is unknown."""
    step = trial.last_step
    if step is None:
        return False
    value = trial.intermediate_values[step]
    se = trial.system_attrs.get(value_se_key(step))
    if se is None or not math.isfinite(value):
        return False
    cut, cut_se = cut_at(study, trial, step, keep_fraction, value, se)
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
    return sign * (cut - value) <= noise_margin * math.hypot(se, cut_se)


def cut_at(study: optuna.Study, trial: FrozenTrial, step: int, keep_fraction: float, value: float,
           se: float) -> tuple[float, float]:
    """The value that decides the cut at `step`, and its standard error."""
    reported = [(value, se)]
    for other in study.get_trials(deepcopy=False):
        if other.number == trial.number or step not in other.intermediate_values:
            continue
        other_value = other.intermediate_values[step]
        if math.isfinite(other_value):
            reported.append((other_value, other.system_attrs.get(value_se_key(step), se)))
    best_first = sorted(reported, key=lambda pair: pair[0], reverse=study.direction == StudyDirection.MAXIMIZE)
    return best_first[max(0, int(len(best_first) * keep_fraction + 1e-9) - 1)]


class NoiseGuard(BasePruner):
    """Wrap `pruner`: keep a trial it would prune while the gap to the cut is within the noise.

    pruner: any Optuna pruner. noise_margin: how many combined standard errors a trial may trail
    the cut by and stay (> 0). keep_fraction: the share of the trials at a step that the pruner
    keeps, which places the cut (1 / reduction_factor for successive halving, 0.5 for the median
    pruner), in (0, 1].
    """

    def __init__(self, pruner: BasePruner, noise_margin: float, keep_fraction: float):
        if not isinstance(pruner, BasePruner):
            raise TypeError(f"NoiseGuard pruner must be an optuna pruner, got {type(pruner).__name__}")
        if isinstance(pruner, HyperbandPruner):
            raise TypeError("NoiseGuard pruner must not be a HyperbandPruner (the samplers would no longer "
                            "see its brackets): use HyperbandNoiseGuard")
        if (isinstance(keep_fraction, bool) or not isinstance(keep_fraction, int | float)
                or not 0 < keep_fraction <= 1):
            raise ValueError(f"NoiseGuard keep_fraction must be a number in (0, 1] (got {keep_fraction!r})")
        self.pruner = pruner
        self.noise_margin = checked_margin("NoiseGuard", noise_margin)
        self.keep_fraction = float(keep_fraction)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if not self.pruner.prune(study, trial):
            return False
        return not trails_within_noise(study, trial, self.noise_margin, self.keep_fraction)


class HyperbandNoiseGuard(HyperbandPruner):
    """Optuna's Hyperband (same arguments) that keeps a trial it would prune while the gap to the
    cut of the trial's bracket is within `noise_margin` combined standard errors (> 0)."""

    def __init__(self, min_resource: int | str = 1, max_resource: int | str = "auto", reduction_factor: int = 3,
                 *, noise_margin: float):
        for name, resource in (("min_resource", min_resource), ("max_resource", max_resource)):
            if resource != "auto" and not whole_number(resource, 1):
                raise ValueError(f"HyperbandNoiseGuard {name} must be a whole number >= 1 or 'auto' (got {resource!r})")
        if not whole_number(reduction_factor, 2):
            raise ValueError("HyperbandNoiseGuard reduction_factor must be a whole number >= 2 "
                             f"(got {reduction_factor!r})")
        self.noise_margin = checked_margin("HyperbandNoiseGuard", noise_margin)
        super().__init__(min_resource=min_resource, max_resource=max_resource, reduction_factor=reduction_factor)
        self.keep_fraction = 1 / reduction_factor

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if not super().prune(study, trial):
            return False
        bracket = hyperband_bracket_study(self, study, trial)
        return not trails_within_noise(bracket, trial, self.noise_margin, self.keep_fraction)
