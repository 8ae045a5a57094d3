"""Every error a command ends on, each with its exit code from `sweeps.exits`: `cli.exit_for` looks
the code up here and prints one line.

The errors the service raises itself derive from `SweepsError` and carry their `code`. The ground
floors (`objectives/`, `storage/`) import nothing from `sweeps/`, so their errors cannot derive from
it: `GROUND` gives their codes. `Terminated` is a BaseException so that no `except Exception`
swallows a SIGTERM. Nothing here imports torch or the sweep loop, so every command can import it.
"""

from __future__ import annotations

import optuna
from sqlalchemy.exc import SQLAlchemyError

from objectives.registry import TaskError
from storage import StorageError, StorageUsageError
from storage.retry import first_line
from sweeps import exits

RESUME = "the running trial is failed and queued again; run the same command again to resume"


class SweepsError(Exception):
    """An error that ends a command: its exit `code` and a one-line message naming the fix."""

    code = exits.FAILED
    names_study_file = False  # the line starts with the study file (the key paths it names are the file's)

    def line(self, study_file: str) -> str:
        return f"{study_file}: {self}" if self.names_study_file else str(self)


class ConfigError(SweepsError, ValueError):
    """A study file problem, always tied to a key path such as `search.batch_size.low`."""

    code = exits.USAGE
    names_study_file = True

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class SearchChanged(SweepsError):
    """The study file defines another search than the stored study's (sweeps.config.fingerprint)."""

    code = exits.USAGE


class GpuError(SweepsError, ValueError):
    """A --gpus / --trials-per-gpu value that cannot be used."""

    code = exits.USAGE


class LogFileError(SweepsError, ValueError):
    """--log-file names a file that cannot be opened for appending."""

    code = exits.USAGE


class Refusal(SweepsError):
    """The fits cannot carry a prediction; the message says why and what would (sweeps.results.frontier)."""

    code = exits.USAGE


class SweepFailed(SweepsError, RuntimeError):
    """Too many trials in a row failed: the task itself is broken, not one configuration."""

    code = exits.FAILED


class NotExportable(SweepsError, RuntimeError):
    """The trial's record lacks what its export must fix (`sweeps best --export`)."""

    code = exits.FAILED


class NotReadable(SweepsError, RuntimeError):
    """The study cannot be read: a bad storage value (USAGE), a store that cannot be opened (STORAGE),
    or no such study in it (NO_STUDY); the raiser says which."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (sweeps.loop.signals)."""

    code = exits.TERMINATED


def interruption_behind(err: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM that `err` was raised while handling, if any (its `__context__` or
    `__cause__`, followed back). A signal's exception raised inside torch's own bookkeeping can come
    out as torch's error instead: a SIGTERM in the middle of `vmap`'s nesting count gave a fused group
    `RuntimeError: !dynamicLayerStack.empty() INTERNAL ASSERT FAILED`, whose context was the
    Terminated. Caught as a trial's failure, the sweep went on training instead of stopping."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (KeyboardInterrupt, Terminated)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


# The ground floors' errors: (code, prefix of the line after the study file, or None for no study file).
GROUND: list[tuple[type[BaseException], int, str | None]] = [
    (TaskError, exits.USAGE, "objective.task: "),
    (StorageUsageError, exits.USAGE, None),  # before StorageError, its base
    (StorageError, exits.STORAGE, None),
    (optuna.exceptions.OptunaError, exits.FAILED, None),
]


def exit_for(err: BaseException, study_file: str) -> tuple[int, str] | None:
    """The exit code and the one line for an error any command can meet; None for any other."""
    if isinstance(err, SweepsError):
        return err.code, err.line(study_file)
    if isinstance(err, KeyboardInterrupt):
        return exits.INTERRUPTED, f"interrupted: {RESUME}"
    if isinstance(err, Terminated):
        return err.code, f"terminated: {RESUME}"
    for kind, code, prefix in GROUND:
        if isinstance(err, kind):
            return code, str(err) if prefix is None else f"{study_file}: {prefix}{err}"
    if isinstance(err, SQLAlchemyError):  # a database error no storage call waited out or named
        return exits.STORAGE, (f"the store failed: {first_line(err)}; check that the database is up and "
                               "reachable, then run the same command again to resume")
    return None
