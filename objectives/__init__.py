"""The training side: the task protocol, the built-in tasks, and the training loop the service owns.

`Task` and `TrialSettings` are loaded on first use, so that importing a torch-free module of this
package (the budget arithmetic, for a report) does not import torch.
"""

from __future__ import annotations

__all__ = ["Task", "TrialSettings"]


def __getattr__(name: str):
    if name in __all__:
        from objectives import task

        return getattr(task, name)
    raise AttributeError(f"module 'objectives' has no attribute {name!r}")
