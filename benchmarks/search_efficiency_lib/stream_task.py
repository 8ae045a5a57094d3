"""Issue 30's held-out task that streams a Dataset from disk: the teacher task's data (objectives/
tasks/teacher.py, its own options) written once to .npy files in ~/.cache/sweeps and read back
through numpy memory maps, one example per `__getitem__`, so every batch is read from the file
(the page cache) rather than indexed in a resident tensor. The service feeds it through its
DataLoader path (`objective.loader.workers: 0` in the benchmark, one process like the baselines);
the baselines through `training.RecipeRun`, which collates the same indices in the same order.

    task: benchmarks.search_efficiency_lib.stream_task:teacher_stream
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from objectives.task import VAL_ACCURACY, Task, TrialSettings, accuracy
from objectives.tasks.teacher import teacher_tensors

FOLDER = Path.home() / ".cache" / "sweeps" / "stream"
DATA_KEYS = ("dim", "classes", "teacher_width", "n_train", "n_val", "label_noise", "data_seed")
DEFAULTS = {"dim": 32, "classes": 8, "teacher_width": 64, "n_train": 4096, "n_val": 1024, "label_noise": 0.15,
            "data_seed": 0}


class MemmapPairs(Dataset):
    """(x[i], y[i]) read from two .npy files through memory maps (opened lazily: picklable)."""

    def __init__(self, x_path: str, y_path: str):
        self.x_path, self.y_path = x_path, y_path
        self.x = self.y = None
        self.n = int(np.load(y_path, mmap_mode="r").shape[0])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.x is None:
            self.x, self.y = np.load(self.x_path, mmap_mode="r"), np.load(self.y_path, mmap_mode="r")
        return torch.from_numpy(np.array(self.x[i])), torch.tensor(int(self.y[i]))


def write_files(options: dict, folder: Path | None = None) -> dict[str, str]:
    """The data's four .npy files for these options, written once (named by their options' hash)."""
    folder = folder or FOLDER
    data = {k: options.get(k, DEFAULTS[k]) for k in DATA_KEYS}
    tag = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    paths = {part: folder / f"teacher_{tag}_{part}.npy" for part in ("x_train", "y_train", "x_val", "y_val")}
    if not all(p.exists() for p in paths.values()):
        folder.mkdir(parents=True, exist_ok=True)
        tensors = teacher_tensors(int(data["dim"]), int(data["classes"]), int(data["teacher_width"]),
                                  int(data["n_train"]), int(data["n_val"]), float(data["label_noise"]),
                                  int(data["data_seed"]))
        for path, tensor in zip(paths.values(), tensors):
            tmp = path.with_name(path.stem + ".tmp.npy")
            np.save(tmp, tensor.numpy())
            tmp.replace(path)
    return {part: str(path) for part, path in paths.items()}


def teacher_stream(settings: TrialSettings) -> Task:
    opts = settings.options
    paths = write_files(opts)
    width, depth = int(opts.get("width", 128)), int(opts.get("depth", 2))
    dim, classes = int(opts.get("dim", DEFAULTS["dim"])), int(opts.get("classes", DEFAULTS["classes"]))
    layers: list[nn.Module] = []
    fan_in = dim
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, classes))
    return Task(nn.Sequential(*layers), MemmapPairs(paths["x_train"], paths["y_train"]),
                MemmapPairs(paths["x_val"], paths["y_val"]), nn.functional.cross_entropy, accuracy,
                metric_name=VAL_ACCURACY)
