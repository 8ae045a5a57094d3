"""The trials' optimizers: torch.optim's SGD, Adam and AdamW, stepped without torch._dynamo.

torch.optim wraps three methods of every optimizer for torch.compile: `add_param_group` and
`zero_grad` in `torch._disable_dynamo`, and `step` in `_use_grad_for_differentiable`, which
also runs it with gradients off. Each wrapper imports `torch._dynamo` on its first call: 0.9 s
(idle) to 1.6 s (loaded) on a 2-core machine, paid once by every process that trains, for a trial
that is never compiled as a whole (`objective.compile` compiles the model, not the optimizer's step).

`eager(cls)` is `cls` with those methods called through to the functions they wrap
(`inspect.unwrap`, which follows the `__wrapped__` that `functools.wraps` sets), and `step` run
under `torch.no_grad()`, as its wrapper runs it when `differentiable` is False (never set here:
`OPTIMIZERS` builds none that is differentiable). The arithmetic is
torch.optim's own, so a trial trains the same bits: tests/test_optimizers.py checks each one
against torch.optim update by update, and that a process that trains one never imports
torch._dynamo. Where a torch version wraps them otherwise (nothing to unwrap), `eager` gives `cls`.
"""

from __future__ import annotations

import inspect

import torch
from torch.optim import SGD, Adam, AdamW, Optimizer


def eager(cls: type[Optimizer]) -> type[Optimizer]:
    """`cls` with its step, zero_grad and add_param_group called without torch._dynamo."""
    methods = (cls.step, Optimizer.zero_grad, Optimizer.add_param_group)
    step, zero_grad, add_param_group = (inspect.unwrap(m) for m in methods)
    if any(inner is outer for inner, outer in zip((step, zero_grad, add_param_group), methods, strict=True)):
        return cls

    class Eager(cls):  # type: ignore[valid-type, misc]
        def add_param_group(self, param_group: dict) -> None:
            add_param_group(self, param_group)

        def zero_grad(self, set_to_none: bool = True) -> None:
            zero_grad(self, set_to_none)

        def step(self, closure=None):
            with torch.no_grad():
                return step(self, closure)

    Eager.__name__ = Eager.__qualname__ = f"Eager{cls.__name__}"  # this module's name for it, for pickle
    return Eager


EagerSGD, EagerAdam, EagerAdamW = eager(SGD), eager(Adam), eager(AdamW)
OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": EagerSGD, "adam": EagerAdam, "adamw": EagerAdamW}
