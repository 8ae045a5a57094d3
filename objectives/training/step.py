"""One optimizer update: the step the trials train with, that `measure_seconds_per_update` times
and that `sweeps probe` measures, so all three run the same code (precision, compiled model,
micro-batches).

The trained state is a value, `TrainState` (the model, whose parameters and buffers are the
weights, and the optimizer over them); `Step` is a function of that state and a batch. A trainer
that fuses several trials on one device substitutes a state whose model calls
`torch.func.functional_call` over parameters stacked with `torch.func.stack_module_state`, and an
optimizer over the stacked tensors: the step itself does not change (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from objectives.task import Task
from objectives.training.batches import Batch, batch_len, forward, split


class OutOfMemory(RuntimeError):
    """Not even a micro-batch of one example fits on the device."""


@dataclass
class TrainState:
    """What an update changes: the model's weights and the optimizer's state over them."""

    model: nn.Module
    optimizer: torch.optim.Optimizer


def micro_batches(batch_size: int, max_micro_batch: int | None) -> int:
    """Accumulation steps: equal micro-batches no larger than `max_micro_batch`."""
    if max_micro_batch is None or batch_size <= max_micro_batch:
        return 1
    return -(-batch_size // max_micro_batch)


def halved(accumulation: int, n: int, device: torch.device, where: str = "") -> int:
    """The accumulation after running out of memory on a batch of `n` (its gradients already
    cleared): the micro-batch halved, the accumulation doubled; OutOfMemory when a micro-batch of
    1 did not fit (`where`: who ran out, for the message)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if accumulation >= n:
        raise OutOfMemory(f"a micro-batch of 1 does not fit{where} (batch {n})") from None
    return min(2 * accumulation, n)


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16: the forward pass under autocast; fp32: as is."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Step:
    """`step(state, batch)`: one update over the batch, split into `accumulation` equal
    micro-batches (their gradients summed, each weighted by its share of the batch), each forward
    pass under the precision's autocast; returns the batch's mean loss, on the device.
    `within_memory` halves the micro-batch on an out-of-memory error: same batch, same update."""

    def __init__(self, task: Task, device: torch.device, *, precision: str = "fp32", accumulation: int = 1):
        self.loss = task.loss
        self.target_key = task.target_key
        self.device = device
        self.autocast = autocast_for(device, precision)
        self.accumulation = accumulation

    def loss_of(self, model: nn.Module, batch: Batch) -> Tensor:
        if type(batch) is tuple and len(batch) == 2:  # the tensor pair: model(x), loss(out, y)
            return self.loss(model(batch[0]), batch[1])
        return self.loss(*forward(model, batch, self.target_key))

    def __call__(self, state: TrainState, batch: Batch) -> Tensor:
        model, optimizer = state.model, state.optimizer
        if self.accumulation == 1:
            with self.autocast:
                loss = self.loss_of(model, batch)
            loss.backward()
        else:
            n = batch_len(batch)
            loss = torch.zeros((), device=self.device)
            for part in split(batch, min(self.accumulation, n)):  # a short last batch: no empty parts
                with self.autocast:
                    part_loss = self.loss_of(model, part) * (batch_len(part) / n)
                part_loss.backward()
                loss += part_loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def within_memory(self, state: TrainState, batch: Batch, update=None) -> Tensor:
        """`update(state, batch)` (this step, or one that measures as it trains); on OOM, halve the
        micro-batch and double the accumulation: the same batch, LR and update."""
        update = update or self
        while True:
            try:
                return update(state, batch)
            except torch.cuda.OutOfMemoryError:
                state.optimizer.zero_grad(set_to_none=True)
                self.accumulation = halved(self.accumulation, batch_len(batch), self.device)
