"""The joint search space: batch size, base LR, coupling rule, warmup and (optionally) epochs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna

from sweeps.config.study_file import FloatRange, IntRange, SearchSection
from sweeps.search.prior import searched


@dataclass(frozen=True)
class Suggestion:
    """One trial's point in the search space, before coupling."""

    batch_size: int
    base_lr: float
    coupling: str
    warmup_fraction: float
    epochs: int | None


def suggest(trial: optuna.Trial, search: SearchSection) -> Suggestion:
    search = searched(search)  # a measured prior's range and rule (sweeps/search/prior.py)
    return Suggestion(
        batch_size=suggest_batch_size(trial, search.batch_size),
        base_lr=suggest_float(trial, "base_lr", search.base_lr),
        coupling=pick(trial, "coupling", search.couplings()),
        warmup_fraction=suggest_float(trial, "warmup_fraction", search.warmup_fraction),
        epochs=None if search.epochs is None else suggest_int(trial, "epochs", search.epochs),
    )


def suggest_batch_size(trial: optuna.Trial, spec: IntRange | list[int] | int) -> int:
    # Powers of two are searched by exponent so that every sampler sees an ordered integer axis.
    if isinstance(spec, IntRange) and spec.power_of_two:
        exponents = [int(math.log2(v)) for v in spec.values()]
        return 2 ** trial.suggest_int("batch_size_log2", exponents[0], exponents[-1])
    return suggest_int(trial, "batch_size", spec)


def suggest_int(trial: optuna.Trial, name: str, spec: IntRange | list[int] | int) -> int:
    if isinstance(spec, IntRange):
        if spec.low == spec.high:
            return spec.low
        return trial.suggest_int(name, spec.low, spec.high, log=spec.log)
    return pick(trial, name, spec if isinstance(spec, list) else [spec])


def suggest_float(trial: optuna.Trial, name: str, spec: FloatRange | list[float] | float) -> float:
    if isinstance(spec, FloatRange):
        if spec.low == spec.high:
            return spec.low
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    return pick(trial, name, spec if isinstance(spec, list) else [spec])


def pick(trial: optuna.Trial, name: str, choices: list):
    """Categorical only when there is a choice; a fixed value is not a search dimension."""
    if len(choices) == 1:
        return choices[0]
    return trial.suggest_categorical(name, choices)


def grid_space(search: SearchSection, points: int) -> dict[str, list]:
    """The GridSampler's space: the same parameter names, continuous ranges cut into `points`."""
    search = searched(search)
    space: dict[str, list] = {}
    batch = search.batch_size
    if isinstance(batch, IntRange) and batch.power_of_two:
        space["batch_size_log2"] = [int(math.log2(v)) for v in batch.values()]
    else:
        add_int_axis(space, "batch_size", batch, points)
    add_float_axis(space, "base_lr", search.base_lr, points)
    if len(search.couplings()) > 1:
        space["coupling"] = search.couplings()
    add_float_axis(space, "warmup_fraction", search.warmup_fraction, points)
    if search.epochs is not None:
        add_int_axis(space, "epochs", search.epochs, points)
    return space


def add_int_axis(space: dict, name: str, spec: IntRange | list[int] | int, points: int) -> None:
    if isinstance(spec, IntRange):
        if spec.low != spec.high:
            grid = np.geomspace if spec.log else np.linspace
            space[name] = sorted({int(round(v)) for v in grid(spec.low, spec.high, points)})
    elif isinstance(spec, list) and len(spec) > 1:
        space[name] = list(spec)


def add_float_axis(space: dict, name: str, spec: FloatRange | list[float] | float, points: int) -> None:
    if isinstance(spec, FloatRange):
        if spec.low != spec.high:
            grid = np.geomspace if spec.log else np.linspace
            space[name] = [float(v) for v in grid(spec.low, spec.high, points)]
    elif isinstance(spec, list) and len(spec) > 1:
        space[name] = list(spec)
