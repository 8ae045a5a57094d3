"""How the learning rate follows the batch size.

Rules (docs/background.md, section Learning-rate coupling): none, linear (Goyal et al.),
sqrt (Krizhevsky; Hoffer et al.) and adam_sqrt (Malladi et al.: sqrt LR plus rescaled betas and
eps for Adam-family optimizers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCALE = {
    "none": lambda k: 1.0,
    "linear": lambda k: k,
    "sqrt": math.sqrt,
    "adam_sqrt": math.sqrt,
}


@dataclass(frozen=True)
class Coupled:
    """The optimizer settings one trial trains with after coupling."""

    lr: float  # effective peak LR
    betas: tuple[float, float] | None = None  # adam_sqrt only
    eps: float | None = None  # adam_sqrt only


def effective_lr(rule: str, base_lr: float, batch_size: int, reference_batch_size: int) -> float:
    return base_lr * SCALE[rule](batch_size / reference_batch_size)


def couple(
    rule: str,
    base_lr: float,
    batch_size: int,
    reference_batch_size: int,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Coupled:
    lr = effective_lr(rule, base_lr, batch_size, reference_batch_size)
    if rule != "adam_sqrt":
        return Coupled(lr)
    k = batch_size / reference_batch_size
    # (1 - beta) scales by k; clamp so a large k cannot push beta below 0 or to 1.
    scaled = tuple(min(max(1.0 - k * (1.0 - b), 0.0), 0.9999) for b in betas)
    return Coupled(lr, betas=scaled, eps=eps / math.sqrt(k))
