"""The whole run state at an update, copied and put back: the weights, the optimizer's state, the
random generators (the global ones dropout draws from, the augment generator) and the data
stream's position (a saved generator state, not a list of batches).

A cooldown branch (`hooks.CooldownBranches`) takes a snapshot, trains on from it, and restores it,
so the main run goes on as if no branch had run. A run that answers for several horizons (decays
branched off a shared stable phase) is the same pair of calls at other updates.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from objectives.training.step import TrainState
from objectives.training.stream import BatchStream, StreamPosition

OptimizerSnapshot = tuple[dict[nn.Parameter, dict[str, object]], list[dict[str, object]]]


def optimizer_snapshot(optimizer: torch.optim.Optimizer) -> OptimizerSnapshot:
    """The optimizer's per-parameter state and group settings, copied."""
    state = {p: {k: v.clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in st.items()}
             for p, st in optimizer.state.items()}
    groups = [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    return state, groups


def restore_optimizer(optimizer: torch.optim.Optimizer, snapshot: OptimizerSnapshot) -> None:
    """Put a snapshot back in place: the same state tensors and group dicts (`load_state_dict`
    would make new groups, and the loop sets the LR on the ones it holds)."""
    state, groups = snapshot
    for p in [p for p in optimizer.state if p not in state]:
        del optimizer.state[p]
    for p, saved in state.items():
        live = optimizer.state[p]
        for k in [k for k in live if k not in saved]:
            del live[k]
        for k, v in saved.items():
            if isinstance(v, Tensor) and isinstance(live.get(k), Tensor) and live[k].shape == v.shape:
                live[k].copy_(v)
            else:
                live[k] = v
    for group, saved in zip(optimizer.param_groups, groups, strict=True):
        group.update(saved)


@dataclass(frozen=True)
class GlobalRng:
    """The global random generators dropout draws from: the CPU's, and the device's on CUDA."""

    cpu: Tensor
    cuda: Tensor | None

    @classmethod
    def take(cls, device: torch.device) -> GlobalRng:
        return cls(torch.random.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)

    def restore(self, device: torch.device) -> None:
        torch.random.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, device)


@dataclass(frozen=True)
class RunSnapshot:
    weights: dict[str, Tensor]
    optimizer: OptimizerSnapshot
    rng: GlobalRng
    augment: Tensor | None  # the augment generator's, when the task augments
    stream: StreamPosition

    @classmethod
    def take(cls, state: TrainState, stream: BatchStream, augment: torch.Generator | None,
             device: torch.device) -> RunSnapshot:
        return cls(
            weights={k: v.detach().clone() for k, v in state.model.state_dict().items()},
            optimizer=optimizer_snapshot(state.optimizer),
            rng=GlobalRng.take(device),
            augment=augment.get_state() if augment is not None else None,
            stream=stream.position(),
        )

    def restore(self, state: TrainState, stream: BatchStream, augment: torch.Generator | None,
                device: torch.device) -> None:
        state.model.load_state_dict(self.weights)
        restore_optimizer(state.optimizer, self.optimizer)
        self.rng.restore(device)
        if augment is not None:
            augment.set_state(self.augment)
        stream.seek(self.stream)
