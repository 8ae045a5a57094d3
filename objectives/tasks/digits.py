"""scikit-learn's bundled 8x8 digits: standardised, one fixed 80/20 split, kept in memory."""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from objectives.task import VAL_ACCURACY, Task, TrialSettings, accuracy

SPLIT_SEED = 0
VAL_FRACTION = 0.2


def bundled_csv() -> Path | None:
    """scikit-learn's own copy of the digits, found without importing scikit-learn (whose import
    costs about 1.4 s of every process that trains digits: each `--workers` worker, each CLI run)."""
    spec = importlib.util.find_spec("sklearn")
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 images' 64 pixels (float64) and their labels, as `sklearn.datasets.load_digits`
    returns them: its file read as it reads it, or the function itself where the file is elsewhere."""
    path = bundled_csv()
    if path is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        return data.data, data.target
    with gzip.open(path, mode="rt", encoding="utf-8") as text:
        table = np.loadtxt(text, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int, copy=False)


@lru_cache(maxsize=1)
def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load once per process: reading the bundled CSV costs more than a short trial's setup."""
    pixels, target = digits_arrays()
    order = np.random.RandomState(SPLIT_SEED).permutation(len(target))
    n_val = int(round(len(order) * VAL_FRACTION))
    val_idx, train_idx = order[:n_val], order[n_val:]
    x = pixels.astype(np.float32)
    mean = x[train_idx].mean(axis=0)
    std = x[train_idx].std(axis=0) + 1e-6  # border pixels are constant
    x = (x - mean) / std
    y = target.astype(np.int64)
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
