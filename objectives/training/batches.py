"""Batches of any structure: a tensor pair, a tuple, or a dict of tensors.

A small tree-map so that moving a batch to the device, splitting it into micro-batches (along
dim 0) and calling the model work the same whatever the task's batch looks like. Leaves that are
not tensors (a list of file names, an int) pass through unchanged and are never split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

Batch = Any  # a Tensor, or a tuple/list/dict of batches


def tree_map(fn: Callable[[Tensor], Any], batch: Batch) -> Batch:
    """Apply `fn` to every tensor of the batch, keeping its structure."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: tree_map(fn, v) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(tree_map(fn, v) for v in batch)
    return batch


def first_tensor(batch: Batch) -> Tensor | None:
    if isinstance(batch, Tensor):
        return batch
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, tuple | list) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def batch_len(batch: Batch) -> int:
    """Examples in the batch: the length of its first tensor along dim 0."""
    tensor = first_tensor(batch)
    if tensor is None:
        raise TypeError(f"a batch must hold at least one tensor, got {type(batch).__name__}")
    return len(tensor)


def split(batch: Batch, parts: int) -> list[Batch]:
    """`parts` micro-batches along dim 0 (sizes differ by at most one, as `tensor_split`)."""
    if isinstance(batch, Tensor):
        return list(batch.tensor_split(parts))
    if isinstance(batch, Mapping):
        columns = {k: split(v, parts) for k, v in batch.items()}
        return [{k: column[i] for k, column in columns.items()} for i in range(parts)]
    if isinstance(batch, tuple | list):
        columns = [split(v, parts) for v in batch]
        return [type(batch)(column[i] for column in columns) for i in range(parts)]
    return [batch] * parts


def to_device(batch: Batch, device: torch.device, non_blocking: bool = False) -> Batch:
    return tree_map(lambda t: t.to(device, non_blocking=non_blocking), batch)


def forward(model: nn.Module, batch: Batch, target_key: str = "labels") -> tuple[Any, Any]:
    """(outputs, targets): a dict batch calls `model(**inputs)` with every key but `target_key`
    (a Hugging Face-style model fits as is); a tuple `(x1, ..., xk, y)` calls `model(x1, ..., xk)`."""
    if isinstance(batch, Mapping):
        return model(**{k: v for k, v in batch.items() if k != target_key}), batch[target_key]
    if isinstance(batch, tuple | list):
        return model(*batch[:-1]), batch[-1]
    raise TypeError(f"a batch must be a tuple (inputs..., targets) or a dict, got {type(batch).__name__}")
