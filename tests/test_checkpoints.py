"""The checkpoint keeper's two halves: the training side serialises, the bookkeeper writes."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import torch

from storage import open_storage
from sweeps.trial.checkpoints import CheckpointKeeper, kept_checkpoints, open_artifact_store


def test_offer_only_serialises_and_write_keeps_the_best(tmp_path):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), direction="maximize")
    keeper = CheckpointKeeper(study, open_artifact_store(tmp_path / "artifacts"), keep=1)
    model = torch.nn.Linear(2, 1)
    first, second, worse = study.ask(), study.ask(), study.ask()

    offered = keeper.offer(first, model, 0.5, {"batch_size": 16})
    assert offered is not None and kept_checkpoints(study) == [], "nothing is written on the training side"
    assert list((tmp_path / "artifacts").iterdir()) == []
    keeper.write(offered)
    assert [k.number for k in kept_checkpoints(study)] == [first.number]

    assert keeper.offer(worse, model, 0.4, {}) is None, "a trial outside the best `keep` costs a comparison"
    better = keeper.offer(second, model, 0.9, {"batch_size": 32})
    keeper.write(better)
    kept = kept_checkpoints(study)
    assert [k.number for k in kept] == [second.number], "the checkpoint that dropped out is evicted"
    assert len(list((tmp_path / "artifacts").iterdir())) == 1
    saved = torch.load(io.BytesIO((tmp_path / "artifacts" / kept[0].artifact_id).read_bytes()))
    assert saved["value"] == 0.9 and saved["settings"]["batch_size"] == 32
    assert torch.equal(saved["state_dict"]["weight"], model.weight.detach())


def test_artifact_folder_precedence(tiny_config, tmp_path, monkeypatch):
    """$SWEEPS_ARTIFACTS, then dashboard.artifacts, then beside the store (a container's workers
    cannot write beside a read-only study file)."""
    from sweeps.trial.checkpoints import artifact_dir

    monkeypatch.delenv("SWEEPS_ARTIFACTS", raising=False)
    pg = "postgresql+psycopg://u@h/db"
    assert artifact_dir(tiny_config(), f"sqlite:///{tmp_path}/s.db", "tiny") == tmp_path / "s-artifacts"
    assert artifact_dir(tiny_config(), pg, "tiny") == tmp_path.resolve() / "tiny-artifacts"
    named = tiny_config(dashboard={"artifacts": "kept"})
    assert artifact_dir(named, pg, "tiny") == tmp_path.resolve() / "kept"
    monkeypatch.setenv("SWEEPS_ARTIFACTS", "/var/sweeps/artifacts")
    assert artifact_dir(named, pg, "tiny") == Path("/var/sweeps/artifacts")
