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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"injected: micro-batch {len(x)} > {self.limit}")
        return self.model(x)
