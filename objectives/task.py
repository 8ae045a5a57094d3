"""The task protocol: a factory gets a trial's settings and returns what to train and measure.

The service owns the loop; a task only says what the model, the data, the loss and the metric
are. `loss` must be a mean over the batch (gradient accumulation relies on it) and `metric` a
mean over the examples it is given (evaluation averages it over chunks of the validation set).

Data (`train`, `val`), in one of two forms:

- a pair of tensors `(inputs, targets)` that fits on the device: moved there once, shuffled by
  index permutation, no DataLoader (the fast path);
- a map-style `torch.utils.data.Dataset` of any size (memory-mapped arrays, files decoded on the
  fly): it stays where it is, and a DataLoader (worker processes, pinned memory and non-blocking
  copies on CUDA, persistent workers, prefetching; `objective.loader` in the study file) feeds
  the device batch by batch. N = len(dataset). Shuffling is seeded from the trial seed.

A batch (what the Dataset's items collate to) is a tuple or a dict of tensors:

- a tuple `(x, y)` calls `model(x)` and `loss(outputs, y)`; `(x1, ..., xk, y)` calls
  `model(x1, ..., xk)`;
- a dict calls `model(**{k: v for k, v in batch.items() if k != target_key})` and
  `loss(outputs, batch[target_key])` (`target_key` defaults to "labels"): a Hugging Face-style
  model whose `forward` takes `input_ids=`, `attention_mask=` fits without a wrapper, with a
  `loss` that reads what it returns (e.g. `lambda out, y: cross_entropy(out.logits..., y)`).

Micro-batching and OOM recovery split every tensor of a batch along dim 0, so each must hold one
row per example.

Optional fields (their defaults keep the plain behaviour):

- `augment(batch, generator) -> batch`: applied to every training batch on the device, drawing
  from `generator` (seeded from the trial seed, on the device); evaluation never augments;
- `tokens_per_example`: what one example counts under a `tokens` budget
  (tokens = examples x tokens_per_example); a tokens budget requires it;
- `target_key`: the key of the targets in a dict batch;
- `metric_per_example(outputs, targets) -> Tensor` of shape (batch,): the metric of each example,
  whose mean is `metric`. Only the standard error of an evaluation (`measure: {value_se: true}`)
  reads it; the built-in `accuracy` and `negative_mse` have theirs (`per_example_metric`), and a
  task without one simply records no standard error;
- `metric_name`: what `metric` is, as `study.metric` names it (e.g. "val_accuracy"); set, a study
  that names another metric is a usage error before anything trains (every built-in task sets it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

Data = tuple[Tensor, Tensor] | Dataset


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
    maximize: bool | None = None  # the study's direction (None: unknown); a task whose metric has one can check it


@dataclass
class Task:
    model: nn.Module
    train: Data
    val: Data
    loss: Callable[[Any, Any], Tensor]
    metric: Callable[[Any, Any], Tensor]
    augment: Callable[[Any, torch.Generator], Any] | None = None  # training batches only, on the device
    tokens_per_example: int | None = None  # for a `tokens` budget
    target_key: str = "labels"  # dict batches: the targets; every other key is a model argument
    metric_per_example: Callable[[Any, Any], Tensor] | None = None  # (batch,) values whose mean is `metric`
    metric_name: str | None = None  # what `metric` is, as study.metric must name it (None: any name)

    @property
    def n_train(self) -> int:
        return len(self.train[0]) if isinstance(self.train, tuple | list) else len(self.train)

    def validate(self) -> None:
        """Reject data the loop cannot train on, naming what is wrong."""
        if self.tokens_per_example is not None and (
                isinstance(self.tokens_per_example, bool) or not isinstance(self.tokens_per_example, int)
                or self.tokens_per_example < 1):
            raise ValueError(f"task tokens_per_example must be a whole number >= 1 (got {self.tokens_per_example!r})")
        for name, data in (("train", self.train), ("val", self.val)):
            if isinstance(data, tuple | list):
                self.validate_tensors(name, data)
            elif isinstance(data, Dataset):
                self.validate_dataset(name, data)
            else:
                raise TypeError(f"task {name} data must be a pair of tensors (inputs, targets) or a "
                                f"torch.utils.data.Dataset, got {type(data).__name__}")

    @staticmethod
    def validate_tensors(name: str, data: tuple) -> None:
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise TypeError(f"task {name} data must be a pair of tensors (inputs, targets)")
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"task {name} data: {len(x)} inputs but {len(y)} targets")
        if len(x) == 0:
            raise ValueError(f"task {name} data is empty")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError(f"task {name} inputs hold NaN or infinite values")

    def validate_dataset(self, name: str, data: Dataset) -> None:
        try:
            n = len(data)
        except TypeError:
            raise TypeError(f"task {name} data: a Dataset needs __len__ (a map-style dataset)") from None
        if n == 0:
            raise ValueError(f"task {name} data is empty")
        first = data[0]  # one example, to check its structure before any trial trains
        if isinstance(first, Mapping):
            if self.target_key not in first:
                raise ValueError(f"task {name} data: a dict example needs the target key {self.target_key!r} "
                                 f"(has {', '.join(map(str, first))}); set Task.target_key")
        elif not isinstance(first, tuple | list) or len(first) < 2:
            raise TypeError(f"task {name} data: an example must be a tuple (inputs..., target) or a dict, "
                            f"got {type(first).__name__}")

    def to(self, device: torch.device) -> Task:
        """Move the model, and tensor data, to the device once: the training loop then never
        copies them. A Dataset stays where it is; its batches are moved step by step."""
        self.model.to(device)
        if isinstance(self.train, tuple | list):
            self.train = tuple(t.to(device) for t in self.train)
        if isinstance(self.val, tuple | list):
            self.val = tuple(t.to(device) for t in self.val)
        return self


VAL_ACCURACY = "val_accuracy"  # the metric names of the built-in tasks (Task.metric_name)
VAL_MSE = "val_mse"


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == targets).float().mean()


def negative_mse(pred: Tensor, targets: Tensor) -> Tensor:
    return -((pred - targets) ** 2).mean()


def accuracy_per_example(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == targets).float()


def squared_error_per_example(pred: Tensor, targets: Tensor) -> Tensor:
    """Each example's squared error, averaged over its own elements: the mean over the examples is
    the MSE (every example holds as many elements)."""
    return ((pred - targets) ** 2).reshape(len(pred), -1).mean(dim=1)


def negative_squared_error_per_example(pred: Tensor, targets: Tensor) -> Tensor:
    return -squared_error_per_example(pred, targets)


# the built-in metrics' per-example values, for a task that does not set `metric_per_example`
PER_EXAMPLE: dict[Callable, Callable] = {
    accuracy: accuracy_per_example,
    negative_mse: negative_squared_error_per_example,
}


def per_example_metric(task: Task) -> Callable[[Any, Any], Tensor] | None:
    """The task's per-example metric: its own, else a built-in metric's, else None (a metric that
    returns only its mean, whose evaluations then carry no standard error)."""
    if task.metric_per_example is not None:
        return task.metric_per_example
    return PER_EXAMPLE.get(task.metric)
