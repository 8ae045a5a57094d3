"""Resolve `objective.task`: a built-in name or `package.module:factory`.

A task module is searched, after Python's own import path, in the working directory, then in the
study file's folder. One rule for every entry point, since each resolves its task here: `sweeps
run`, `python -m sweeps.run` (where Python has put the working directory first already), the
children of `--workers` (started in the parent's working directory) and the compose workers
(working directory /app, the image's root, which holds `examples/`). So `examples.custom_task`
imports from the repository root, and `mytask.py` beside the study file from anywhere.
"""

from __future__ import annotations

import importlib
import os
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


def task_folders(study_dir: str | None) -> list[str]:
    """Where a task module is searched after the import path, in order (the module docstring)."""
    folders = [os.getcwd(), *([os.path.abspath(study_dir)] if study_dir else [])]
    return list(dict.fromkeys(folders))


def add_task_folders(path: list[str], folders: list[str]) -> None:
    """Append to `path` (sys.path) each folder it lacks; '' on it stands for the working directory."""
    on_path = {os.path.realpath(entry or os.curdir) for entry in path}
    path.extend(folder for folder in folders if os.path.realpath(folder) not in on_path)


def resolve_task(name: str, study_dir: str | None = None) -> TaskFactory:
    """`study_dir`: the study file's folder, where a task module may sit too."""
    target = BUILTIN.get(name, name)
    folders = task_folders(study_dir)
    add_task_folders(sys.path, folders)
    if ":" not in target:
        known = ", ".join(sorted(BUILTIN))
        raise TaskNotFound(f"unknown task {name!r}: use one of {known} or 'package.module:factory'")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        searched = f"the working directory {folders[0]}" + (
            f", then the study file's folder {folders[1]}" if len(folders) > 1 else "")
        raise TaskNotFound(f"cannot import module {module_name!r} for task {name!r}: {err} (searched the "
                           f"import path, {searched})") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskNotFound(f"module {module_name!r} has no callable {attr!r} (task {name!r})")
    return factory
