"""Where a study lives and how many trials it wants: the study file with the command line's
overrides applied. Every command resolves its store here, in the one documented order."""

from __future__ import annotations

from dataclasses import dataclass

from storage.sql import resolve_url
from sweeps.config.study_file import SweepConfig


@dataclass
class SweepTarget:
    storage_url: str
    study_name: str
    n_trials: int
    confirms: str | None = None  # a companion of `sweeps confirm`: the main study it confirms


def target_of(config: SweepConfig, storage: str | None = None, study_name: str | None = None,
              n_trials: int | None = None) -> SweepTarget:
    """`storage`, `study_name` and `n_trials` are the command line's, None when not given."""
    name = study_name or config.study.name
    url = resolve_url(storage, config.study.storage, config.base_dir, name)
    return SweepTarget(url, name, n_trials or config.study.n_trials)
