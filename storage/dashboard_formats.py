"""optuna-dashboard's private storage formats, which the service writes directly.

Notes, plots and artifact records are study system attributes under keys optuna-dashboard reads.
The service writes them itself, in one transaction each, instead of through `optuna_dashboard.save_note`
and `save_plotly_graph_object` (which read every study system attribute twice per call, and whose
import pulls in the dashboard's whole web app). These formats are not optuna-dashboard's public API,
hence its version bound below its next minor release in pyproject.toml; `tests/test_optuna_private.py`
checks each against the installed optuna-dashboard and through its web API.
"""

from __future__ import annotations

from typing import Any

CHUNK = 2045
"""The longest piece of a note or plot in one attribute (`optuna_dashboard._note.SYSTEM_ATTR_MAX_LENGTH`)."""

ARTIFACT_KEY_PREFIX = "dashboard:artifacts:"
"""`optuna_dashboard.artifact._backend.DASHBOARD_ARTIFACTS_ATTR_PREFIX`: a trial artifact's record kept
in the study's system attributes, where (unlike a finished trial's) it can be cleared."""

PLOT_DATA_KEY_PREFIX = "dashboard:plot_data:"
"""`optuna_dashboard._custom_plot_data.SYSTEM_ATTR_PLOT_DATA`."""


def note_ver_key(trial_id: int | None) -> str:
    """The key of the version of the study's note (`trial_id` None) or a trial's (`optuna_dashboard._note`)."""
    return "dashboard:note_ver" if trial_id is None else f"dashboard:{trial_id}:note_ver"


def note_str_key_prefix(trial_id: int | None) -> str:
    """The keys of a note's chunks are this prefix followed by 0, 1, ... (`optuna_dashboard._note`)."""
    return "dashboard:note_str:" if trial_id is None else f"dashboard:{trial_id}:note_str:"


def chunks(text: str, prefix: str) -> dict[str, str]:
    """`text` split as optuna-dashboard splits notes and plots: `prefix0`, `prefix1`, ... of CHUNK characters."""
    return {f"{prefix}{i}": text[start:start + CHUNK] for i, start in enumerate(range(0, len(text), CHUNK))}


def plot_data_key_prefix(graph_object_id: str) -> str:
    """The prefix of a plot's chunks (`optuna_dashboard._custom_plot_data`); the dashboard lists the plot
    under `graph_object_id`."""
    return f"{PLOT_DATA_KEY_PREFIX}{graph_object_id}:"


def artifact_key(trial_id: int, artifact_id: str) -> str:
    """The study system attribute holding a trial artifact's record (JSON of `artifact_meta`, or JSON null
    once removed), which the dashboard lists with the trial and serves."""
    return f"{ARTIFACT_KEY_PREFIX}{trial_id}:{artifact_id}"


def parse_artifact_key(key: str) -> tuple[int, str] | None:
    """(trial id, artifact id) of an `artifact_key`, or None for any other key."""
    if not key.startswith(ARTIFACT_KEY_PREFIX):
        return None
    trial, _, artifact = key[len(ARTIFACT_KEY_PREFIX):].partition(":")
    return int(trial), artifact


def artifact_meta(artifact_id: str, filename: str, mimetype: str = "application/octet-stream",
                  encoding: str | None = None) -> dict[str, Any]:
    """An artifact's record as the dashboard reads it (`optuna_dashboard.artifact._backend.ArtifactMeta`)."""
    return {"artifact_id": artifact_id, "filename": filename, "mimetype": mimetype, "encoding": encoding}
