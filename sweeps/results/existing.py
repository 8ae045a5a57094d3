"""Open a study that a sweep already made, for reading: the report and the dashboard.

The same URL resolution as the runner (`sweeps.loop.runner.target_of`), but nothing is created: a
SQLite file that does not exist, a store that cannot be opened and a study that is not in the
store each end in one clear message.

The study file only finds the store and the study; what the study ran with is the config it
stored (`ran_with`: the file with its `--set` overrides, replaced on `--allow-changes`), and a
read command that finds the file on disk different says so in one line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url

from storage import StorageError, StorageUsageError, open_storage, redact
from sweeps import exits
from sweeps.config.fingerprint import changes_between, flatten, shown
from sweeps.config.study_file import SweepConfig, load_config, parse_config
from sweeps.config.target import SweepTarget, target_of
from sweeps.errors import ConfigError, NotReadable
from sweeps.results.resume import stored_config
from sweeps.trial.record import CONFIG_ATTR, OVERRIDES_ATTR

SHOWN_CHANGES = 3  # differing keys a note names before it counts the rest
# keys every command takes from the study file on purpose, never from the stored config: how many
# trials the study gets, and its total budget (the ledger records the file's; raising it continues)
FROM_THE_FILE = ("study.n_trials", "study.total_budget")
# how batches are loaded changes no result, and its default follows the machine and the environment
# (objective.loader.workers: the cores, OMP_NUM_THREADS, --workers): never a difference worth a note
NOT_COMPARED = ("objective.loader.",)


@dataclass
class Existing:
    config: SweepConfig  # the study file's, with this command's --set: finds the store and the study
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


def ran_with(existing: Existing, study: optuna.Study) -> SweepConfig:
    """The config the study ran with, as it stored it (the study file with its `--set` overrides,
    replaced by a run with `--allow-changes`); the study file's when the study stored none that
    loads. Prints one `note:` line (stderr) when the study file on disk differs from it."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(stored, dict):
        return existing.config
    try:
        config = parse_config(stored, existing.config.base_dir)
    except ConfigError:
        return existing.config
    note = differs_note(stored, existing, study)
    if note:
        print(note, file=sys.stderr)
    return config


def differs_note(stored: dict, existing: Existing, study: optuna.Study) -> str | None:
    """One line naming the keys where the study file differs from the study's stored config (not
    `FROM_THE_FILE`, which the commands take from the file)."""
    old: dict = {}
    new: dict = {}
    for section, value in stored.items():
        flatten(section, value, old)
    for section, value in stored_config(existing.config, existing.target).items():
        flatten(section, value, new)
    diff = [c for c in changes_between(old, new) if not c.key.startswith(FROM_THE_FILE + NOT_COMPARED)]
    if not diff:
        return None
    listed = "; ".join(f"{c.key}: {shown(c.new)} in the file, {shown(c.old)} in the study"
                       for c in diff[:SHOWN_CHANGES])
    more = f"; and {len(diff) - SHOWN_CHANGES} more" if len(diff) > SHOWN_CHANGES else ""
    sets = study.user_attrs.get(OVERRIDES_ATTR)
    made = f" (it ran with {' '.join(f'--set {s}' for s in sets)})" if sets else ""
    return (f"note: {existing.target.study_name!r} is read with the config it ran with{made}, not the study "
            f"file's: {listed}{more}")
