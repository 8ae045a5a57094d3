"""scikit-learn's bundled 8x8 digits: standardised, one fixed 80/20 split, kept in memory."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from objectives.task import VAL_ACCURACY, Task, TrialSettings, accuracy

SPLIT_SEED = 0
VAL_FRACTION = 0.2


@lru_cache(maxsize=1)
def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load once per process: reading the bundled CSV costs more than a short trial's setup."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.RandomState(SPLIT_SEED).permutation(len(data.target))
    n_val = int(round(len(order) * VAL_FRACTION))
    val_idx, train_idx = order[:n_val], order[n_val:]
    x = data.data.astype(np.float32)
    mean = x[train_idx].mean(axis=0)
    std = x[train_idx].std(axis=0) + 1e-6  # border pixels are constant
    x = (x - mean) / std
    y = data.target.astype(np.int64)
    return (
        torch.from_numpy(x[train_idx]),
        torch.from_numpy(y[train_idx]),
        torch.from_numpy(x[val_idx]),
        torch.from_numpy(y[val_idx]),
    )


def digits_mlp(settings: TrialSettings) -> Task:
    hidden = int(settings.options.get("hidden", 128))
    x_train, y_train, x_val, y_val = digits_tensors()
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    return Task(model, (x_train, y_train), (x_val, y_val), nn.functional.cross_entropy, accuracy,
                metric_name=VAL_ACCURACY)


def digits_cnn(settings: TrialSettings) -> Task:
    channels = int(settings.options.get("channels", 16))
    x_train, y_train, x_val, y_val = digits_tensors()
    model = nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * channels * 16, 10),
    )
    images = (x_train.view(-1, 1, 8, 8), y_train)
    return Task(model, images, (x_val.view(-1, 1, 8, 8), y_val), nn.functional.cross_entropy, accuracy,
                metric_name=VAL_ACCURACY)
