"""K models of one architecture as one: their parameters and buffers stacked along a new dim 0
(`torch.func.stack_module_state`), run on a stacked batch [K, B, ...] in one pass.

Two paths, chosen by what the model is made of (`fuse_models`; `FusedModel.path` says which):

- `bmm`: an `nn.Sequential` of `nn.Linear` layers, elementwise activations, dropout and a flatten
  (or one `nn.Linear`).
  Each linear layer is one `torch.baddbmm` over the stacked weights (`linear.py`, which also says
  where the activations lie between layers): no vmap, no functional_call, a few dispatches per
  layer whatever K is (on the CPU, where an update of a small model is mostly Python and
  dispatch, this is where fusion pays). A group of one runs `nn.Linear`'s own kernel, bit for bit
  its solo run; at K > 1 each member's slice of `baddbmm` gives what `nn.Linear` gives up to the
  order it sums in (tests/test_fused.py).
- `vmap`: anything else (convolutions, batch norm, custom modules): `torch.func.functional_call`
  on a parameterless copy of the model under `torch.vmap` over the stacked tensors. Batch norm
  updates each member's running statistics in its own slice of the stacked buffers.

Dropout draws one mask over the whole stacked batch from the global generator (the bmm path) or a
different mask per member (`randomness="different"`, the vmap path): never the masks the member's
solo run would draw, so a model with dropout is not reproduced exactly, only in distribution.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from objectives.training.fused import linear as stacked_linear

# modules applied as they are to a [K, B, ...] tensor: elementwise, so the member dim changes nothing
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus, nn.Mish,
               nn.Identity, nn.Dropout)


class NotFusable(ValueError):
    """These members cannot train as one fused model; the message says why."""


def architecture_difference(models: Sequence[nn.Module]) -> str | None:
    """Why these models cannot be stacked (None: they can): same class, same parameter and buffer
    names, shapes and dtypes."""
    first = models[0]
    for i, model in enumerate(models[1:], start=1):
        if type(model) is not type(first):
            return f"member {i} is a {type(model).__name__}, member 0 a {type(first).__name__}"
        for kind, ours, theirs in (("parameter", first.named_parameters(), model.named_parameters()),
                                   ("buffer", first.named_buffers(), model.named_buffers())):
            a = {name: (tuple(t.shape), t.dtype) for name, t in ours}
            b = {name: (tuple(t.shape), t.dtype) for name, t in theirs}
            if a != b:
                diff = sorted(set(a.items()) ^ set(b.items()))[0]
                return f"member {i} differs from member 0 in {kind} {diff[0]!r} {diff[1][0]}"
        if repr(model) != repr(first):
            return f"member {i}'s modules differ from member 0's ({type(model).__name__})"
    return None


class StackedWeights:
    """The members' parameters (leaves that train) and buffers, each [K, ...], keyed as the
    model's `state_dict` keys them."""

    def __init__(self, models: Sequence[nn.Module]):
        self.params, self.buffers = stack_module_state(list(models))

    @property
    def size(self) -> int:
        return len(next(iter(self.params.values())))

    def param_list(self) -> list[Tensor]:
        return list(self.params.values())

    def member(self, k: int) -> dict[str, Tensor]:
        """Member k's weights, copied: a state dict its own model loads."""
        return {name: t[k].detach().clone() for name, t in (*self.params.items(), *self.buffers.items())}

    def keep(self, index: Sequence[int]) -> None:
        """Keep the members at `index`, in that order (new leaf tensors: the old graph is gone)."""
        rows = torch.tensor(list(index), dtype=torch.long, device=self.param_list()[0].device)
        self.params = {k: v.detach().index_select(0, rows).requires_grad_(v.requires_grad)
                       for k, v in self.params.items()}
        self.buffers = {k: v.index_select(0, rows) for k, v in self.buffers.items()}

    def add(self, models: Sequence[nn.Module]) -> None:
        """Append the members of `models` after the others (a refill): their own weights and
        buffers, as `stack_module_state` stacks them (new leaf tensors: the old graph is gone)."""
        params, buffers = stack_module_state(list(models))
        self.params = {k: torch.cat([v.detach(), params[k].detach().to(v.device, v.dtype)]).requires_grad_(
                           v.requires_grad) for k, v in self.params.items()}
        self.buffers = {k: torch.cat([v, buffers[k].to(v.device, v.dtype)]) for k, v in self.buffers.items()}


class FusedModel:
    """`model(x)`: x is [K, B, ...] (one batch per member) or [B, ...] (the same batch for all, as
    in evaluation); the output is [K, B, ...]."""

    path = ""

    def __init__(self, models: Sequence[nn.Module]):
        self.weights = StackedWeights(models)
        self.training = True

    def train(self, mode: bool = True) -> None:
        self.training = mode

    def eval(self) -> None:
        self.train(False)

    def __call__(self, x: Tensor, shared: bool = False) -> Tensor:
        raise NotImplementedError

    def shared_outputs(self, x: Tensor) -> Tensor:
        """Every member's outputs on the one input [N, ...] (an evaluation chunk), [K, N, ...]."""
        return self(x, shared=True)


# an evaluation's activations, K members x examples x the widest layer, at most this many floats
# at a time (1 MiB): larger ones cost a fresh page per 4 KiB on every evaluation (glibc returns them
# to the system), 1,400 page faults in a 4.6 ms evaluation of 16 digits MLPs, 2.1 ms in pieces
EVAL_PIECE_FLOATS = 2**18


class LinearStack(FusedModel):
    """The bmm path: `ops` lists, in order, ("linear", weight name, bias name or None),
    ("flatten",) and ("apply", module) for the elementwise modules."""

    path = "bmm"

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__(models)
        self.ops: list[tuple] = []
        if type(models[0]) is nn.Linear:  # a lone linear layer: a stack of one
            self.ops.append(("linear", "weight", "bias" if models[0].bias is not None else None))
        for name, module in models[0].named_children():
            if isinstance(module, nn.Linear):
                self.ops.append(("linear", f"{name}.weight", f"{name}.bias" if module.bias is not None else None))
            elif isinstance(module, nn.Flatten):
                self.ops.append(("flatten",))
            else:
                self.ops.append(("apply", copy.deepcopy(module)))
        self.widest = max(self.weights.params[op[1]].shape[1] for op in self.ops if op[0] == "linear")  # outputs

    def shared_outputs(self, x: Tensor) -> Tensor:
        """In pieces of examples whose activations stay under `EVAL_PIECE_FLOATS` (K > 1: a group
        of one runs its solo run's evaluation, whole), concatenated: each example's outputs are
        its own, whatever else is in the piece."""
        k = self.weights.size
        rows = max(1, EVAL_PIECE_FLOATS // (k * self.widest))
        if k == 1 or rows >= len(x):
            return self(x, shared=True)
        return torch.cat([self(x[start : start + rows], shared=True) for start in range(0, len(x), rows)], dim=1)

    def __call__(self, x: Tensor, shared: bool = False) -> Tensor:
        params, k = self.weights.params, self.weights.size
        x, layout = stacked_linear.start(x, shared, k)
        for op in self.ops:
            if op[0] == "linear":
                x, layout = stacked_linear.linear(x, layout, params[op[1]], None if op[2] is None else params[op[2]])
            elif op[0] == "flatten":
                x = stacked_linear.flatten(x, layout)
            else:
                module = op[1]
                module.train(self.training)
                x = module(x)
        return stacked_linear.finish(x, layout, k)


def linear_stack_fits(model: nn.Module) -> bool:
    """An `nn.Sequential` of linear layers, elementwise modules and flattens of all but the batch
    dim, or a lone `nn.Linear`."""
    if type(model) is nn.Linear:
        return True
    if type(model) is not nn.Sequential or len(model) == 0:
        return False
    for module in model:
        if isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                return False
        elif not isinstance(module, (nn.Linear, *ELEMENTWISE)):
            return False
    return any(isinstance(module, nn.Linear) for module in model)


class VmapStack(FusedModel):
    """The general path: `functional_call` on a copy of the model on the meta device, vmapped over
    the stacked parameters and buffers (and over the batch unless it is shared)."""

    path = "vmap"

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__(models)
        self.base = copy.deepcopy(models[0]).to("meta")

        def call(params, buffers, x):
            return functional_call(self.base, (params, buffers), (x,))

        self.batched = torch.vmap(call, in_dims=(0, 0, 0), randomness="different")
        self.shared_batch = torch.vmap(call, in_dims=(0, 0, None), randomness="different")

    def __call__(self, x: Tensor, shared: bool = False) -> Tensor:
        self.base.train(self.training)
        fn = self.shared_batch if shared else self.batched
        return fn(self.weights.params, self.weights.buffers, x)


def fuse_models(models: Sequence[nn.Module], path: str = "auto") -> FusedModel:
    """The members' models as one: `path` auto (bmm where it fits, else vmap), bmm or vmap."""
    reason = architecture_difference(models)
    if reason is not None:
        raise NotFusable(f"architectures differ: {reason}")
    if path == "bmm" and not linear_stack_fits(models[0]):
        raise NotFusable("the bmm path takes an nn.Sequential of Linear, elementwise and Flatten modules")
    if path == "bmm" or (path == "auto" and linear_stack_fits(models[0])):
        return LinearStack(models)
    return VmapStack(models)
