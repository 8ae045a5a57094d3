"""Resolve `objective.task`: a built-in name or `package.module:factory`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry itself needs no torch: a command that only reports errors imports it
    from objectives.task import Task, TrialSettings

TaskFactory = Callable[["TrialSettings"], "Task"]

BUILTIN = {
    "digits_mlp": "objectives.tasks.digits:digits_mlp",
    "digits_cnn": "objectives.tasks.digits:digits_cnn",
    "regression": "objectives.tasks.regression:regression",
    "resnet_synthetic": "objectives.tasks.synthetic_images:resnet_synthetic",
    "teacher_mlp": "objectives.tasks.teacher:teacher_mlp",
    "cifar10": "objectives.tasks.cifar10:cifar10",
    "char_lm": "objectives.tasks.char_lm:char_lm",
    "csv": "objectives.tasks.csv_table:csv_table",
}


class TaskError(RuntimeError):
    """The task cannot be used: not found, or its factory fails or returns bad data."""


class TaskNotFound(TaskError, LookupError):
    pass


def resolve_task(name: str, study_dir: str | None = None) -> TaskFactory:
    """`study_dir` (the study file's folder) is importable too, so a task module can sit beside it."""
    target = BUILTIN.get(name, name)
    if study_dir and study_dir not in sys.path:
        sys.path.append(study_dir)
    if ":" not in target:
        known = ", ".join(sorted(BUILTIN))
        raise TaskNotFound(f"unknown task {name!r}: use one of {known} or 'package.module:factory'")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise TaskNotFound(f"cannot import module {module_name!r} for task {name!r}: {err}") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskNotFound(f"module {module_name!r} has no callable {attr!r} (task {name!r})")
    return factory
