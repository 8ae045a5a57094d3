"""Samplers and pruners from the study file. Pruner resources are in report steps (see budget)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna

from objectives.training.budget import Budget
from sweeps.config.study_file import PrunerSection, SamplerSection, SearchSection
from sweeps.search.noise_guard import HyperbandNoiseGuard, NoiseGuard
from sweeps.search.space import grid_space


def build_sampler(section: SamplerSection, search: SearchSection, seed: int) -> optuna.samplers.BaseSampler:
    name = section.name
    if name == "tpe":
        # Multivariate: one joint model per trial (batch size and LR interact), one history read.
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=section.n_startup_trials, constant_liar=True, multivariate=True,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_space(search, section.grid_points), seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=section.n_startup_trials)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {name!r}")


def grid_size(config) -> int:
    space = grid_space(config.search, config.sampler.grid_points)
    return math.prod(len(values) for values in space.values())


def first_rung(section: PrunerSection, budget: Budget, horizons: Sequence[float] | None = None) -> float:
    """The pruner's first rung in budget units: `min_resource`, else the shortest horizon (with
    horizons a trial reports only finished horizons), else one evaluation interval."""
    if section.min_resource:
        return section.min_resource
    return horizons[0] if horizons else budget.eval_every


def build_pruner(section: PrunerSection, budget: Budget, n_train: int,
                 horizons: Sequence[float] | None = None) -> optuna.pruners.BasePruner:
    """The section's pruner; with `noise_margin` (opt-in), its noise guard
    (`sweeps.search.noise_guard`)."""
    name = section.name
    margin = section.noise_margin
    min_units = first_rung(section, budget, horizons)
    min_step = max(1, budget.to_step(min_units, n_train))
    max_step = max(min_step, budget.to_step(budget.per_trial, n_train))
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        median = optuna.pruners.MedianPruner(
            n_startup_trials=section.n_startup_trials,
            n_warmup_steps=budget.to_step(section.warmup, n_train),
        )
        return median if margin is None else NoiseGuard(median, margin, keep_fraction=0.5)
    if name == "hyperband":
        if margin is not None:
            return HyperbandNoiseGuard(min_resource=min_step, max_resource=max_step,
                                       reduction_factor=section.reduction_factor, noise_margin=margin)
        return optuna.pruners.HyperbandPruner(
            min_resource=min_step, max_resource=max_step, reduction_factor=section.reduction_factor
        )
    if name == "successive_halving":
        halving = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_step, reduction_factor=section.reduction_factor
        )
        return halving if margin is None else NoiseGuard(halving, margin, keep_fraction=1 / section.reduction_factor)
    raise ValueError(f"unknown pruner {name!r}")


class PruningSteps:
    """Which report steps the pruner can act on, so only those go to the store during a trial.

    Successive halving and Hyperband decide only at rungs (min_resource x eta^k); the median
    pruner at every step; none never. Other evaluations are stored once, when the trial ends.
    """

    def __init__(self, section: PrunerSection, budget: Budget, n_train: int, horizons: Sequence[float] | None = None):
        self.name = section.name
        self.eta = section.reduction_factor
        self.next_rung = max(1, budget.to_step(first_rung(section, budget, horizons), n_train))

    def __call__(self, step: int) -> bool:
        if self.name == "median":
            return True
        if self.name == "none" or step < self.next_rung:
            return False
        while self.next_rung <= step:
            self.next_rung *= self.eta
        return True
