"""How a study's trials train: one value, built once from the study file (`sweeps.trial.run_one`)
and handed to every `Trainer`. What differs per trial (seed, reporter, live record) is not here."""

from __future__ import annotations

from dataclasses import dataclass, field

from objectives.training.data import LoaderOptions


@dataclass(frozen=True)
class EarlyStopping:
    patience: int
    min_delta: float = 0.0


class Patience:
    """Early stopping's running state: True from `exhausted` once `patience` evaluations in a row
    failed to beat the reference by more than `min_delta` (in the metric's direction)."""

    def __init__(self, rule: EarlyStopping | None, sign: float):
        self.rule, self.sign = rule, sign
        self.ref: float | None = None
        self.bad = 0

    def exhausted(self, value: float) -> bool:
        if self.rule is None:
            return False
        if self.ref is None or self.sign * (value - self.ref) > self.rule.min_delta:
            self.ref, self.bad = value, 0
            return False
        self.bad += 1
        return self.bad >= self.rule.patience


@dataclass(frozen=True)
class TrainerOptions:
    maximize: bool  # the metric's direction: which evaluation is the best
    early_stopping: EarlyStopping | None = None
    max_micro_batch: int | None = None  # split larger batches into equal micro-batches up front
    eval_batch_size: int = 4096
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    loader: LoaderOptions = field(default_factory=LoaderOptions)  # a Dataset task's DataLoader
    # instruments (each a hook of the loop, `objectives.training.hooks`); off, the loop runs without them
    measure_noise: bool = False  # the gradient noise scale B_simple at each evaluation
    cooldown_fraction: float | None = None  # cooldown-branch evaluations (a wsd schedule only)
    measure_value_se: bool = False  # each evaluation's standard error, from its examples' values
    # horizons: the lengths in budget units, ascending, the last the trial's own (`horizons.py`);
    # every shorter one is answered by a decay branched off this run's stable phase
    horizons: tuple[float, ...] | None = None
