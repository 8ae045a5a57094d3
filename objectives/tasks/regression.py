"""Synthetic linear regression with known label noise: the optimum is known exactly.

x ~ N(0, I_d), y = x . w* + sigma * noise. The best achievable validation MSE is sigma^2, so a
sweep's answer can be checked against the truth (docs/background.md, section Gradient noise
scale and critical batch size: the check with known answers).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from objectives.task import VAL_MSE, Task, TrialSettings, squared_error_per_example


@lru_cache(maxsize=4)
def regression_tensors(dim: int, n_train: int, n_val: int, noise: float, data_seed: int):
    gen = torch.Generator().manual_seed(data_seed)
    w_star = torch.randn(dim, 1, generator=gen)
    x = torch.randn(n_train + n_val, dim, generator=gen)
    y = x @ w_star + noise * torch.randn(n_train + n_val, 1, generator=gen)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def mse(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((pred - targets) ** 2).mean()


def regression(settings: TrialSettings) -> Task:
    opts = settings.options
    x_train, y_train, x_val, y_val = regression_tensors(
        int(opts.get("dim", 32)),
        int(opts.get("n_train", 2048)),
        int(opts.get("n_val", 512)),
        float(opts.get("noise", 0.5)),
        int(opts.get("data_seed", 0)),
    )
    model = nn.Linear(x_train.shape[1], 1)
    return Task(model, (x_train, y_train), (x_val, y_val), mse, mse, metric_per_example=squared_error_per_example,
                metric_name=VAL_MSE)
