"""A CSV file with a named target column: an MLP on standardised features.

The first row names the columns. Every other column is a feature, unless `features` lists the
ones to use: a column whose cells all parse as numbers is standardised (a missing cell takes the
training mean), any other is one-hot encoded (an empty cell is a category of its own).

Kind: classification when the target holds strings, or integers with few distinct values
(at most 20, and fewer than 5% of the rows); regression otherwise. `kind` (classification |
regression) overrides the guess. The study file must name the matching metric and direction; a
metric or direction that does not match the kind is an error (exit 2):
- classification: cross-entropy loss, metric accuracy (`study.metric: val_accuracy`,
  `study.direction: maximize`);
- regression: loss the MSE of the standardised target, metric the MSE in the target's own units
  (`study.metric: val_mse`, `study.direction: minimize`).

A fixed `val_fraction` (0.2) of the rows is held out, drawn with `split_seed` (0): every trial
of a study sees the same split.

Options: path, target, kind, features, hidden (64, or a list of widths: one hidden layer each),
val_fraction, split_seed, delimiter (","), max_classes (20).
"""

from __future__ import annotations

import csv
import math
import os
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn

from objectives.task import VAL_ACCURACY, VAL_MSE, Task, TrialSettings, accuracy, squared_error_per_example
from objectives.tasks.datafiles import DataFileError, data_path, option

EXPECTED = "a CSV file with a header row"
KINDS = ("classification", "regression")


def as_number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def guess_kind(cells: list[str], max_classes: int) -> str:
    numbers = [as_number(c) for c in cells]
    if any(n is None for n in numbers):
        return "classification"  # strings
    if all(n.is_integer() for n in numbers):
        distinct = len(set(numbers))
        if distinct <= max_classes and distinct < 0.05 * len(numbers):
            return "classification"
    return "regression"


def read_rows(path: str, delimiter: str) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the data rows (cells stripped) and each data row's line number in the file."""
    if not os.path.isfile(path):
        raise DataFileError(path, f"expected {EXPECTED}, found a folder")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            numbered = [(reader.line_num, row) for row in reader if row]  # blank lines skipped
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataFileError(path, f"expected {EXPECTED}: {err}") from None
    if len(numbered) < 2:
        raise DataFileError(path, f"expected {EXPECTED} and at least two data rows, "
                                  f"got {max(0, len(numbered) - 1)} rows")
    rows = [row for _, row in numbered]
    header = [h.strip() for h in rows[0]]
    for line, row in numbered[1:]:
        if len(row) != len(header):
            raise DataFileError(path, f"expected {len(header)} cells on every row (as in the header), "
                                      f"got {len(row)} on line {line}")
    return header, [[c.strip() for c in row] for row in rows[1:]], [line for line, _ in numbered[1:]]


def encode_features(columns: dict[str, list[str]], train_idx: np.ndarray) -> np.ndarray:
    blocks = []
    for cells in columns.values():
        numbers = [as_number(c) if c else math.nan for c in cells]
        if all(n is not None for n in numbers):
            col = np.asarray(numbers, dtype=np.float64)
            train = col[train_idx]
            mean = np.nanmean(train) if np.isfinite(train).any() else 0.0
            col = np.where(np.isnan(col), mean, col)
            std = col[train_idx].std()
            blocks.append(((col - mean) / (std if std > 0 else 1.0))[:, None])
        else:
            categories = sorted(set(cells))
            index = {c: i for i, c in enumerate(categories)}
            onehot = np.zeros((len(cells), len(categories)))
            onehot[np.arange(len(cells)), [index[c] for c in cells]] = 1.0
            blocks.append(onehot)
    return np.concatenate(blocks, axis=1).astype(np.float32)


@lru_cache(maxsize=4)
def table_tensors(path: str, target: str, kind: str | None, features: tuple[str, ...] | None,
                  val_fraction: float, split_seed: int, delimiter: str, max_classes: int):
    """(x_train, y_train, x_val, y_val, kind, classes, y_mean, y_std); read once per process."""
    header, rows, lines = read_rows(path, delimiter)
    if target not in header:
        raise DataFileError(path, f"expected a target column named {target!r}; the header has {header}")
    names = list(features) if features is not None else [h for h in header if h != target]
    missing = [n for n in names if n not in header]
    if missing or target in names or not names:
        problem = f"columns {missing} are not in the header {header}" if missing else \
            "the target cannot be a feature" if target in names else "no feature columns"
        raise DataFileError(path, f"expected feature columns beside the target: {problem}")
    y_cells = [row[header.index(target)] for row in rows]
    if any(c == "" for c in y_cells):
        line = lines[y_cells.index("")]
        raise DataFileError(path, f"expected a value in the target column {target!r} on every row; "
                                  f"line {line} is empty")
    kind = kind or guess_kind(y_cells, max_classes)
    n = len(rows)
    order = np.random.RandomState(split_seed).permutation(n)
    n_val = int(round(n * val_fraction))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    if n_val == 0 or len(train_idx) == 0:
        raise DataFileError(path, f"expected enough rows for a validation split of {val_fraction}: got {n} rows")
    x = encode_features({name: [row[header.index(name)] for row in rows] for name in names}, train_idx)
    classes: list[str] = []
    y_mean, y_std = 0.0, 1.0
    if kind == "classification":
        numbers = [as_number(c) for c in y_cells]
        numeric = all(v is not None for v in numbers)
        distinct = sorted(set(numbers)) if numeric else sorted(set(y_cells))
        lookup = {v: i for i, v in enumerate(distinct)}
        y = np.asarray([lookup[v] for v in (numbers if numeric else y_cells)], dtype=np.int64)
        classes = [str(int(v)) if numeric and float(v).is_integer() else str(v) for v in distinct]
        if len(classes) < 2:
            raise DataFileError(path, f"expected at least two classes in {target!r}, got {classes}")
    else:
        numbers = [as_number(c) for c in y_cells]
        if any(v is None for v in numbers):
            bad = next(c for c, v in zip(y_cells, numbers) if v is None)
            raise DataFileError(path, f"expected numbers in the target column {target!r} for regression, "
                                      f"got {bad!r} (objective.options.kind: classification for labels)")
        y = np.asarray(numbers, dtype=np.float32)[:, None]
        y_mean, y_std = float(y[train_idx].mean()), float(y[train_idx].std()) or 1.0
    return (torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx]), torch.from_numpy(x[val_idx]),
            torch.from_numpy(y[val_idx]), kind, tuple(classes), y_mean, y_std)


class Destandardize(nn.Module):
    """The network predicts the standardised target; this puts it back in the target's units."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, z: Tensor) -> Tensor:
        return z * self.std + self.mean


def mlp(inputs: int, hidden: list[int], outputs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    return layers + [nn.Linear(inputs, outputs)]


def hidden_widths(settings: TrialSettings) -> list[int]:
    raw = settings.options.get("hidden", 64)
    widths = raw if isinstance(raw, list) else [raw]
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise DataFileError("objective.options.hidden", f"expected a positive int or a list of them, got {raw!r}")
    return widths


def check_direction(kind: str, maximize: bool | None) -> None:
    """Accuracy is maximised and MSE minimised: a study that goes the other way would search for
    the worst model, silently."""
    wanted = kind == "classification"
    if maximize is not None and maximize != wanted:
        metric, direction = (VAL_ACCURACY, "maximize") if wanted else (VAL_MSE, "minimize")
        raise ValueError(f"the CSV target is a {kind} target, whose metric is {metric}: set study.metric: "
                         f"{metric} and study.direction: {direction} (or objective.options.kind)")


def csv_table(settings: TrialSettings) -> Task:
    path = data_path(settings, EXPECTED, sample="csv")
    opts = settings.options
    target = opts.get("target")
    if not target or not isinstance(target, str):
        raise DataFileError("objective.options.target", "missing: name the CSV column to predict")
    kind = opts.get("kind")
    if kind is not None and kind not in KINDS:
        raise DataFileError("objective.options.kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
    features = opts.get("features")
    if features is not None and not (isinstance(features, list) and all(isinstance(f, str) for f in features)):
        raise DataFileError("objective.options.features", f"expected a list of column names, got {features!r}")
    x_train, y_train, x_val, y_val, kind, classes, y_mean, y_std = table_tensors(
        path, target, kind, tuple(features) if features is not None else None,
        option(settings, "val_fraction", 0.2, float, 0.0, 0.9), option(settings, "split_seed", 0),
        str(opts.get("delimiter", ",")), option(settings, "max_classes", 20, int, low=2),
    )
    check_direction(kind, settings.maximize)
    hidden = hidden_widths(settings)
    if kind == "classification":
        model = nn.Sequential(*mlp(x_train.shape[1], hidden, len(classes)))
        return Task(model, (x_train, y_train), (x_val, y_val), nn.functional.cross_entropy, accuracy,
                    metric_name=VAL_ACCURACY)

    def standardised_mse(pred: Tensor, targets: Tensor) -> Tensor:
        return (((pred.float() - targets) / y_std) ** 2).mean()

    def mse(pred: Tensor, targets: Tensor) -> Tensor:
        return ((pred.float() - targets) ** 2).mean()

    model = nn.Sequential(*mlp(x_train.shape[1], hidden, 1), Destandardize(y_mean, y_std))
    return Task(model, (x_train, y_train), (x_val, y_val), standardised_mse, mse, metric_name=VAL_MSE,
                metric_per_example=lambda pred, targets: squared_error_per_example(pred.float(), targets))
