"""Where a study's files go: checkpoints and reports, chosen in one place.

A folder the user names wins ($SWEEPS_ARTIFACTS, then `dashboard.artifacts`, for checkpoints;
`--out` for a report). Otherwise the files go beside the SQLite store, where the user chose to
keep the study; a server store (PostgreSQL) has no folder of its own, so they go beside the study
file, and the sweep says so once (`checkpoint_notice`). A default never lands inside the
installed packages (`sweeps/`, `objectives/`, `storage/`, in site-packages or a checkout): there
it is the working directory instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from sweeps.config.study_file import SweepConfig

ARTIFACTS_ENV = "SWEEPS_ARTIFACTS"  # wins over dashboard.artifacts: a container points every worker at its volume
_PACKAGES_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = tuple(_PACKAGES_ROOT / name for name in ("sweeps", "objectives", "storage"))


@dataclass(frozen=True)
class Folder:
    path: Path
    named: bool  # the user named it (flag, environment or study file), rather than a default


def sqlite_file(storage_url: str) -> Path | None:
    url = make_url(storage_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database)
    return None


def inside_packages(path: Path) -> bool:
    """True for a path in (or at) one of the installed packages' folders."""
    resolved = path.resolve()
    return any(resolved == d or d in resolved.parents for d in PACKAGE_DIRS)


def default_folder(storage_url: str, base_dir: str | Path, name: str) -> Path:
    """`name` beside the SQLite file, else beside the study file; the working directory instead
    of a folder inside the packages."""
    db = sqlite_file(storage_url)
    folder = db.parent if db is not None else Path(base_dir)
    if inside_packages(folder):
        folder = Path.cwd()
    return folder / name


def checkpoint_folder(config: SweepConfig, storage_url: str, study_name: str) -> Folder:
    """$SWEEPS_ARTIFACTS, then dashboard.artifacts (relative to the study file), then
    `<store stem>-artifacts` beside the SQLite file, or `<study name>-artifacts` beside the study
    file for a server store."""
    chosen = os.environ.get(ARTIFACTS_ENV) or config.dashboard.artifacts
    if chosen:
        path = Path(chosen).expanduser()
        return Folder(path if path.is_absolute() else Path(config.base_dir) / path, named=True)
    db = sqlite_file(storage_url)
    name = f"{db.stem}-artifacts" if db is not None else f"{study_name}-artifacts"
    return Folder(default_folder(storage_url, config.base_dir, name), named=False)


def report_folder(config: SweepConfig, storage_url: str, study_name: str, out: str | None) -> Path:
    """`--out`, else `<study name>-report` beside the SQLite store (or the study file)."""
    if out:
        return Path(out)
    return default_folder(storage_url, config.base_dir, f"{study_name}-report")


def checkpoint_notice(config: SweepConfig, storage_url: str, study_name: str) -> str | None:
    """The one line a sweep on a server store prints about its checkpoints (None for SQLite,
    whose checkpoints sit beside its file, or when checkpoints are off)."""
    if config.dashboard.keep_checkpoints < 1 or sqlite_file(storage_url) is not None:
        return None
    folder = checkpoint_folder(config, storage_url, study_name)
    if folder.named:
        return f"checkpoints: {folder.path} (every worker and the dashboard must see this folder)"
    backend = make_url(storage_url).get_backend_name()
    return (f"checkpoints: {folder.path}, beside the study file, as a {backend} store keeps no "
            f"files; to choose a folder every worker and the dashboard see, set dashboard.artifacts or "
            f"${ARTIFACTS_ENV}; dashboard.keep_checkpoints: 0 turns them off")
