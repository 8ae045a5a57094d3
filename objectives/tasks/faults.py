"""Fault injection for the out-of-memory path, so it is tested on machines without a GPU."""

from __future__ import annotations

import torch
from torch import nn


class OutOfMemoryAbove(nn.Module):
    """Wraps a model; a training forward pass on more than `limit` examples raises the real
    `torch.cuda.OutOfMemoryError`, as a GPU would for a micro-batch that does not fit."""

    def __init__(self, model: nn.Module, limit: int):
        super().__init__()
        self.model = model
        self.limit = limit

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        """Any inputs (a dict batch arrives as keyword arguments): the first one's length counts."""
        n = len((*args, *kwargs.values())[0])
        if self.training and n > self.limit:
            raise torch.cuda.OutOfMemoryError(f"injected: micro-batch {n} > {self.limit}")
        return self.model(*args, **kwargs)
