"""The task protocol: a factory gets a trial's settings and returns what to train and measure.

The service owns the loop; a task only says what the model, the data, the loss and the metric
are. `loss` must be a mean over the batch (gradient accumulation relies on it) and `metric` a
mean over the examples it is given (evaluation averages it over chunks of the validation set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TrialSettings:
    """What a task factory may use: the trial's resolved settings and the task's own options."""

    batch_size: int
    lr: float
    seed: int
    device: torch.device
    params: dict[str, Any] = field(default_factory=dict)  # every searched value of the trial
    options: dict[str, Any] = field(default_factory=dict)  # objective.options from the study file
    base_dir: str = "."  # the study file's folder: relative data paths resolve against it


@dataclass
class Task:
    model: nn.Module
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    loss: Callable[[Tensor, Tensor], Tensor]
    metric: Callable[[Tensor, Tensor], Tensor]

    def validate(self) -> None:
        """Reject data the loop cannot train on, naming what is wrong."""
        for name, (x, y) in (("train", self.train), ("val", self.val)):
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise TypeError(f"task {name} data must be a pair of tensors (inputs, targets)")
            if len(x) != len(y):
                raise ValueError(f"task {name} data: {len(x)} inputs but {len(y)} targets")
            if len(x) == 0:
                raise ValueError(f"task {name} data is empty")
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise ValueError(f"task {name} inputs hold NaN or infinite values")

    def to(self, device: torch.device) -> Task:
        """Move model and data to the device once; the training loop then never copies."""
        self.model.to(device)
        self.train = tuple(t.to(device) for t in self.train)
        self.val = tuple(t.to(device) for t in self.val)
        return self


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == targets).float().mean()


def negative_mse(pred: Tensor, targets: Tensor) -> Tensor:
    return -((pred - targets) ** 2).mean()
