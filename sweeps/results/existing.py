"""Open a study that a sweep already made, for reading: the report and the dashboard.

The same URL resolution as the runner (`sweeps.loop.runner.target_of`), but nothing is created: a
SQLite file that does not exist, a store that cannot be opened and a study that is not in the
store each end in one clear message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url

from storage import StorageError, StorageUsageError, open_storage, redact
from sweeps import exits
from sweeps.config.study_file import SweepConfig, load_config
from sweeps.config.target import SweepTarget, target_of


class NotReadable(RuntimeError):
    """The study cannot be read; `code` is the command's exit status."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Existing:
    config: SweepConfig
    target: SweepTarget
    storage: optuna.storages.BaseStorage


def open_existing(study_file: str, storage_url: str | None = None, study_name: str | None = None,
                  overrides: Sequence[str] = ()) -> Existing:
    config = load_config(study_file, overrides=overrides)  # a ConfigError is the caller's to report
    try:
        target = target_of(config, storage_url, study_name)
    except StorageUsageError as err:
        raise NotReadable(exits.USAGE, str(err)) from err
    except StorageError as err:
        raise NotReadable(exits.STORAGE, str(err)) from err
    url = make_url(target.storage_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database).is_file():
        raise NotReadable(exits.STORAGE, f"no store at {url.database}: run `sweeps run {study_file}` "
                                        "first (or pass --storage)")
    try:
        storage = open_storage(target.storage_url)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    except StorageError as err:
        raise NotReadable(exits.STORAGE, str(err)) from err
    except Exception as err:  # a file that is not a database, a server that went away
        raise NotReadable(exits.STORAGE, f"cannot read storage {redact(target.storage_url)}: "
                                        f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
    if target.study_name not in names:
        there = ", ".join(names) if names else "none"
        raise NotReadable(exits.NO_STUDY, f"no study {target.study_name!r} in {redact(target.storage_url)} "
                                         f"(studies there: {there})")
    return Existing(config, target, storage)


def load(existing: Existing) -> optuna.Study:
    return optuna.load_study(study_name=existing.target.study_name, storage=existing.storage)
