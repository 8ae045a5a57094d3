"""Built-in training tasks, the task protocol, and the training loop the service owns."""

from objectives.task import Task, TrialSettings

__all__ = ["Task", "TrialSettings"]
