"""Shared by the tasks that read local files: where the file is, and one-line errors naming it.
Torch-free, so `sweeps best` can place a data path without loading torch."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from objectives.task import TrialSettings

PATH_OPTION = "path"  # objective.options.path: the data, relative to the study file's folder


class DataFileError(ValueError):
    """A data file is missing or not in the expected format. The message is one line that names
    the file and says what was expected; the command maps it to exit 2 (objectives.registry.TaskError)."""

    def __init__(self, path: str, expected: str):
        super().__init__(f"{path}: {' '.join(expected.split())}")
        self.path = path


def data_path(settings: TrialSettings, what: str, sample: str | None = None) -> str:
    """objective.options.path, resolved against the study file's folder; `what` names the format,
    and `sample` the kind `python -m objectives.tasks.samples` writes in it, offered when the path
    is missing."""
    raw = settings.options.get(PATH_OPTION)
    if not raw or not isinstance(raw, str):
        raise DataFileError(f"objective.options.{PATH_OPTION}", f"missing: give the path of {what}")
    path = resolve_path(settings.base_dir, raw)
    if not os.path.exists(path):
        offer = (f" (to try the task on a small generated one: python -m objectives.tasks.samples {sample} {path})"
                 if sample else "")
        raise DataFileError(path, f"no such file or folder; expected {what}{offer}")
    return path


def resolve_path(base_dir: str, raw: str) -> str:
    """A path as the study file gives it (relative to its folder, or absolute, or ~), made absolute."""
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(raw)))


def option(settings: TrialSettings, name: str, default, kind=int, low=None, high=None):
    """objective.options[name] converted to `kind`, with a one-line error naming the option."""
    value = settings.options.get(name, default)
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise DataFileError(f"objective.options.{name}", f"expected {kind.__name__}, got {value!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{'' if low is None else f'>= {low}'}{' and ' if low is not None and high is not None else ''}" \
                 f"{'' if high is None else f'<= {high}'}"
        raise DataFileError(f"objective.options.{name}", f"expected {bounds}, got {value!r}")
    return value
