"""A user task for `objective.task: examples.custom_task:two_moons` (run from the repository root).

The factory gets the trial's resolved settings and returns the model, the training and
validation tensors, the loss (a batch mean) and the metric (a mean over the examples given);
the service owns the training loop, the budget and the LR coupling.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from objectives import Task, TrialSettings
from objectives.task import accuracy


def make_moons(n: int, noise: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 2, (n,), generator=gen)
    angle = torch.rand(n, generator=gen) * math.pi
    x = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    x[labels == 1] = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)[labels == 1]
    return x + noise * torch.randn(n, 2, generator=gen), labels


def two_moons(settings: TrialSettings) -> Task:
    opts = settings.options
    gen = torch.Generator().manual_seed(int(opts.get("data_seed", 0)))  # same data in every trial
    x, y = make_moons(int(opts.get("n", 2000)), float(opts.get("noise", 0.2)), gen)
    n_val = len(x) // 5
    hidden = int(opts.get("hidden", 32))
    model = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))
    return Task(model, (x[n_val:], y[n_val:]), (x[:n_val], y[:n_val]), nn.functional.cross_entropy, accuracy,
                metric_name="val_accuracy")  # study.metric must name it so
