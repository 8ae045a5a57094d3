"""Several trials fused on one device (issue 26): members that share an architecture, a batch
size and their data train as one model, their parameters stacked along a new dim 0.

- `model`: the stacked weights and the fused forward (`bmm` for stacks of linear layers, `vmap`
  over `functional_call` for anything else), and `NotFusable`;
- `linear`: the bmm path's linear layer for K members, and its backward;
- `direct`: the bmm path's update without autograd (linear layers, common activations, cross
  entropy), bit for bit the autograd update;
- `batched`: the task's loss and metric over the stacked outputs, one value per member;
- `orders`: each member's batch order, the group's indices taken at once;
- `optim`: SGD, Adam and AdamW over the stacked tensors, each member with its own hyperparameters;
- `refusal`: whether a group can fuse, and if not, why;
- `trainer`: the fused loop (`FusedTrainer`, `FusedMember`).
"""

from objectives.training.fused.model import NotFusable, fuse_models
from objectives.training.fused.optim import MemberOptimizer, stacked_optimizer
from objectives.training.fused.trainer import FusedMember, FusedTrainer, train_fused

__all__ = ["FusedMember", "FusedTrainer", "MemberOptimizer", "NotFusable", "fuse_models", "stacked_optimizer",
           "train_fused"]
