"""Every command that opens an existing study finds its store in each of the three ways a user
gives it (`--storage`, `$SWEEPS_STORAGE`, the study file's `study.storage`), and with none of them
looks beside the study file, where this store is not: exit 4 (no such study) or 3 (no store)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps import best, confirm, exits, report, run, studies
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]

COMMANDS = {
    "report": lambda study, extra: report.main([str(study), "--out", str(study.parent / "rep"), *extra]),
    "best": lambda study, extra: best.main([str(study), "--top", "1", *extra]),
    "studies": lambda study, extra: studies.main([str(study), *extra]),
    "confirm": lambda study, extra: confirm.main([str(study), "--top", "1", "--seeds", "1", *extra]),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One finished 2-trial study in a store that is not where the study file would put it."""
    folder = tmp_path_factory.mktemp("three_ways")
    db = folder / "elsewhere" / "kept.db"
    db.parent.mkdir()
    study = write(folder, None)
    assert run.main([str(study), "--quiet", "--storage", f"sqlite:///{db}"]) == exits.OK
    return db


def write(folder: Path, storage: str | None, **budget: object) -> Path:
    data = copy.deepcopy(TINY)
    data["study"].update(name="three", n_trials=2)
    data["budget"].update(budget)
    if storage is not None:
        data["study"]["storage"] = storage
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("way", ["--storage", "$SWEEPS_STORAGE", "study.storage", "none"])
def test_each_command_finds_the_store_each_way(command, way, store, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    url = f"sqlite:///{store}"
    study = write(tmp_path, url if way == "study.storage" else None)
    if way == "$SWEEPS_STORAGE":
        monkeypatch.setenv("SWEEPS_STORAGE", url)
    code = COMMANDS[command](study, ["--storage", url] if way == "--storage" else [])
    out = capsys.readouterr()
    if way == "none":  # three.db beside the study file: no such store
        assert code in (exits.STORAGE, exits.NO_STUDY), (code, out.err)
        assert not (tmp_path / "three.db").exists(), "a reading command must not create a store"
        return
    assert code == exits.OK, out.err
    assert "three" in out.out


@pytest.fixture(scope="module")
def horizons_store(tmp_path_factory) -> Path:
    """The same, with budget.horizons: every trial answers 10 and 20 updates besides its 40."""
    folder = tmp_path_factory.mktemp("three_ways_horizons")
    db = folder / "elsewhere" / "kept.db"
    db.parent.mkdir()
    study = write(folder, None, horizons=[10, "0.5x"])
    assert run.main([str(study), "--quiet", "--storage", f"sqlite:///{db}"]) == exits.OK
    return db


HORIZON_SECTIONS = {"best": "best per horizon (updates)", "report": "best value against compute over all horizons"}


@pytest.mark.parametrize("command", sorted(HORIZON_SECTIONS))
@pytest.mark.parametrize("way", ["--storage", "$SWEEPS_STORAGE", "study.storage"])
def test_best_and_report_show_the_horizons_each_way(command, way, horizons_store, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    url = f"sqlite:///{horizons_store}"
    study = write(tmp_path, url if way == "study.storage" else None, horizons=[10, "0.5x"])
    if way == "$SWEEPS_STORAGE":
        monkeypatch.setenv("SWEEPS_STORAGE", url)
    code = COMMANDS[command](study, ["--storage", url] if way == "--storage" else [])
    out = capsys.readouterr()
    assert code == exits.OK, out.err
    lines = out.out.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith(HORIZON_SECTIONS[command]))
    assert [line.split()[0] for line in lines[title + 2:title + 5]] == ["10", "20", "40"]


@pytest.mark.parametrize("command", ["studies", "report"])
def test_a_pipe_closed_early_ends_quietly_with_its_exit_code(command, store, tmp_path):
    """`sweeps report ... | head`: the command stops at the closed pipe with 141 and no traceback,
    however little it had left to print (a short output meets the pipe only when flushed)."""
    study = write(tmp_path, f"sqlite:///{store}")
    env = {k: v for k, v in os.environ.items() if k != "SWEEPS_STORAGE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    extra = ["--out", str(tmp_path / "rep")] if command == "report" else []
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.console", command, str(study), *extra], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == exits.BROKEN_PIPE, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
