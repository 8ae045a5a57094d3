"""The best trials' best weights, kept as Optuna artifacts that optuna-dashboard lists and serves.

A trial's weights exist only in the process that trains it, and only until the trial ends, so
the decision to keep them is taken right after training (the Trainer has restored the best
state by then), and the weights are serialised there; the sweep loop's bookkeeper writes them.
Writing a checkpoint for every trial would cost a file and a store write per trial; instead
the keeper remembers the values of the checkpoints it keeps and writes one only for a trial that
enters the best `keep` of the study, then deletes the one that dropped out. On a study of n
trials a new best-k entry is rare after the first few (about k ln(n/k) writes for trials in
random order), and every other trial costs one comparison.

The artifact's record lives in the study's system attributes under the dashboard's own key
(`dashboard:artifacts:<trial_id>:<artifact_id>`), where the dashboard lists it with its trial
and serves it, and where, unlike a finished trial's attributes, it can be cleared when the
checkpoint is evicted. Files go to a FileSystemArtifactStore in the folder `sweeps.config.locations`
chooses: $SWEEPS_ARTIFACTS, `dashboard.artifacts`, else beside the SQLite file, or beside the study
file for a server store (every worker must then see that folder).
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from storage.dashboard_formats import artifact_key, artifact_meta, parse_artifact_key
from storage.optuna_private import study_id_of, study_storage, trial_id_of
from sweeps.config.locations import checkpoint_folder
from sweeps.config.study_file import SweepConfig

if TYPE_CHECKING:  # torch is imported where weights are serialised: the read-only commands never need it
    import torch

logger = logging.getLogger("sweeps")


def artifact_dir(config: SweepConfig, storage_url: str, study_name: str) -> Path:
    """$SWEEPS_ARTIFACTS, then dashboard.artifacts, then beside the SQLite file (or, for a server
    store, `<study name>-artifacts` beside the study file): `sweeps.config.locations`."""
    return checkpoint_folder(config, storage_url, study_name).path


def open_artifact_store(path: Path, create: bool = True) -> FileSystemArtifactStore | None:
    if not path.is_dir():
        if not create:
            return None
        path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


@dataclass
class Kept:
    value: float
    trial_id: int
    number: int
    artifact_id: str


def kept_checkpoints(study: optuna.Study) -> list[Kept]:
    """The checkpoints the study keeps now, best first."""
    kept = []
    for key, raw in study_storage(study).get_study_system_attrs(study_id_of(study)).items():
        parsed = parse_artifact_key(key)
        if parsed is None:
            continue
        meta = json.loads(raw) if isinstance(raw, str) else raw
        if meta and "sweeps_value" in meta:
            kept.append(Kept(meta["sweeps_value"], parsed[0], meta.get("sweeps_trial_number", -1),
                             meta["artifact_id"]))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(kept, key=lambda k: (-k.value if maximize else k.value, k.number))


@dataclass
class Checkpoint:
    """A trial's best weights, serialised where it trained, written by the bookkeeper."""

    trial_id: int
    number: int
    value: float
    payload: bytes


class CheckpointKeeper:
    """Keeps the best weights of the study's best `keep` trials.

    Split in two so the training side pays only a comparison and, for a trial that enters the best
    `keep`, the serialisation (`offer`); the file, its record and the eviction are written by the
    sweep loop's bookkeeper (`write`), off the training thread.
    """

    def __init__(self, study: optuna.Study, store: FileSystemArtifactStore, keep: int):
        self.study = study
        self.store = store
        self.keep = keep
        self.maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        self.values = [k.value for k in kept_checkpoints(study)]  # other workers' may be missing: refreshed on write

    def admits(self, value: float) -> bool:
        if len(self.values) < self.keep:
            return True
        worst = min(self.values) if self.maximize else max(self.values)
        return value > worst if self.maximize else value < worst

    def offer(self, trial: optuna.Trial, model: torch.nn.Module, value: float | None,
              settings: dict) -> Checkpoint | None:
        """`model`'s weights if `value` enters the best `keep`; never fails the trial."""
        if self.keep < 1 or value is None or not self.admits(value):
            return None
        try:
            payload = serialise(trial, model, value, settings)
        except Exception:  # a model that cannot be saved must not fail a trial that trained fine
            logger.exception("could not serialise the checkpoint of trial %d", trial.number)
            return None
        self.values = sorted(self.values + [value], reverse=self.maximize)[: self.keep]
        return Checkpoint(trial_id_of(trial), trial.number, value, payload)

    def write(self, checkpoint: Checkpoint) -> None:
        """Store the file and its record, then evict what dropped out of the best `keep`."""
        try:
            self.save(checkpoint)
        except Exception:  # a full disk must not fail a trial that trained fine
            logger.exception("could not keep the checkpoint of trial %d", checkpoint.number)

    def save(self, checkpoint: Checkpoint) -> None:
        artifact_id = str(uuid.uuid4())
        self.store.write(artifact_id, io.BytesIO(checkpoint.payload))
        meta = {**artifact_meta(artifact_id, f"trial-{checkpoint.number}-best.pt"),
                "sweeps_value": checkpoint.value, "sweeps_trial_number": checkpoint.number}
        storage, study_id = study_storage(self.study), study_id_of(self.study)
        storage.set_study_system_attr(study_id, artifact_key(checkpoint.trial_id, artifact_id), json.dumps(meta))
        kept = kept_checkpoints(self.study)
        for old in kept[self.keep:]:
            self.evict(old)
        self.values = [k.value for k in kept[: self.keep]]

    def evict(self, old: Kept) -> None:
        storage, study_id = study_storage(self.study), study_id_of(self.study)
        storage.set_study_system_attr(study_id, artifact_key(old.trial_id, old.artifact_id), json.dumps(None))
        try:
            self.store.remove(old.artifact_id)
        except ArtifactNotFound:
            pass


def serialise(trial: optuna.Trial, model: torch.nn.Module, value: float, settings: dict) -> bytes:
    import torch

    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "value": value, "trial": trial.number,
                "settings": {**trial.params, **settings}}, buffer)
    return buffer.getvalue()
