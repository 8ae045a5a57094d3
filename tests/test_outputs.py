"""Where output goes: checkpoints and reports beside the SQLite store by default, where the user
says otherwise, never inside the installed packages, and ignored by git in the examples."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import sweeps
from sweeps.config.locations import checkpoint_folder, checkpoint_notice, default_folder, report_folder
from sweeps.config.study_file import load_config
from sweeps.config.target import target_of

REPO = Path(__file__).resolve().parents[1]
PG = "postgresql+psycopg://u@h/db"


def test_a_report_goes_beside_the_sqlite_store_unless_out_says_otherwise(tiny_config, tmp_path):
    store = tmp_path / "stores"
    store.mkdir()
    config = tiny_config()  # the study file's folder is tmp_path
    assert report_folder(config, f"sqlite:///{store}/s.db", "tiny", None) == store / "tiny-report"
    assert report_folder(config, f"sqlite:///{store}/s.db", "tiny", "out/r") == Path("out/r")
    assert report_folder(config, PG, "tiny", None) == tmp_path.resolve() / "tiny-report"


def test_no_default_lands_inside_the_installed_packages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    package = Path(sweeps.__file__).resolve().parent
    assert default_folder(PG, package / "config", "s-report") == tmp_path / "s-report"
    inside = f"sqlite:///{package}/s.db"
    assert default_folder(inside, tmp_path / "elsewhere", "s-artifacts") == tmp_path / "s-artifacts"
    assert default_folder(f"sqlite:///{REPO}/examples/s.db", package, "x") == REPO / "examples" / "x"  # not a package


def test_a_server_store_says_where_its_checkpoints_go(tiny_config, tmp_path, monkeypatch):
    monkeypatch.delenv("SWEEPS_ARTIFACTS", raising=False)
    config = tiny_config()
    assert checkpoint_notice(config, f"sqlite:///{tmp_path}/s.db", "tiny") is None  # beside its file, as documented
    said = checkpoint_notice(config, PG, "tiny")
    assert said.startswith(f"checkpoints: {tmp_path.resolve() / 'tiny-artifacts'}, beside the study file")
    assert "dashboard.artifacts" in said and "$SWEEPS_ARTIFACTS" in said and "keep_checkpoints: 0" in said
    named = tiny_config(dashboard={"artifacts": "/shared/ckpt"})
    assert checkpoint_notice(named, PG, "tiny") == "checkpoints: /shared/ckpt (every worker and the dashboard " \
                                                   "must see this folder)"
    assert checkpoint_notice(tiny_config(dashboard={"keep_checkpoints": 0}), PG, "tiny") is None


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_git_ignores_what_each_example_writes(example, monkeypatch):
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    monkeypatch.delenv("SWEEPS_ARTIFACTS", raising=False)
    config = load_config(REPO / "examples" / example)
    target = target_of(config)
    store = Path(target.storage_url.removeprefix("sqlite:///"))
    written = [store, store.with_name(store.name + "-wal"), checkpoint_folder(config, target.storage_url,
               target.study_name).path / "x", report_folder(config, target.storage_url, target.study_name, None) / "x"]
    for path in written:
        done = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO)
        assert done.returncode == 0, f"{example} writes {path}, which git does not ignore"
