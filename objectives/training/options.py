"""How a study's trials train: one value, built once from the study file (`sweeps.trial.run_one`)
and handed to every `Trainer`. What differs per trial (seed, reporter, live record) is not here."""

from __future__ import annotations

from dataclasses import dataclass, field

from objectives.training.data import LoaderOptions


@dataclass(frozen=True)
class EarlyStopping:
    patience: int
    min_delta: float = 0.0


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
