"""`python -m sweeps.run`: dry run, exit codes, the store left untouched by bad input, resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import yaml

from sweeps.run import main
from tests.conftest import TINY, merged

REPO = Path(__file__).resolve().parents[1]


def write_study(folder: Path, **overrides) -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(merged(TINY, overrides)))
    return path


def trials_of(db: Path, name: str = "tiny") -> list[tuple]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return [(t.number, t.state, t.value, t.datetime_complete) for t in study.trials]


def test_dry_run_prints_the_plan_and_opens_no_store(tmp_path, capsys):
    study = write_study(tmp_path, study={"storage": "sqlite:///plan.db"},
                        search={"coupling": ["none", "linear", "sqrt"], "reference_batch_size": 16})
    assert main([str(study), "--dry-run"]) == 0
    out = capsys.readouterr().out
    header, *rows = [line.split() for line in out.splitlines() if line.strip().startswith(("batch_size", "16", "64"))]
    assert header == ["batch_size", "iterations_per_epoch", "updates", "epochs", "examples",
                      "lr_none", "lr_linear", "lr_sqrt"]
    by_batch = {int(r[0]): r for r in rows}
    assert by_batch[16][1:3] == ["16", "40"]  # N = 256: ceil(256/16) = 16 per epoch, 40 updates
    assert by_batch[64][1:5] == ["4", "40", "10", "2560"]  # 40 updates = 10 epochs of 4
    base = float(by_batch[16][5])
    assert abs(float(by_batch[64][6]) - base * 4) < 4e-3 * base  # linear: x B/B0 = 4
    assert abs(float(by_batch[64][7]) - base * 2) < 2e-3 * base  # sqrt: x 2
    assert not (tmp_path / "plan.db").exists()


def test_drop_last_plan_uses_floor(tmp_path, capsys):
    study = write_study(tmp_path, objective={"drop_last": True, "options": {"n_train": 250}})
    assert main([str(study), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "floor, drop_last" in out
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["64"])
    assert row[1] == "3"  # floor(250 / 64)


def test_config_error_exits_2_and_leaves_the_store_untouched(tmp_path, capsys):
    good = write_study(tmp_path, study={"storage": "sqlite:///store.db"})
    assert main([str(good), "--quiet"]) == 0
    before = trials_of(tmp_path / "store.db")
    assert len(before) == 3
    db_bytes = (tmp_path / "store.db").read_bytes()
    bad = write_study(tmp_path, study={"storage": "sqlite:///store.db", "n_trials": 6},
                      search={"batch_size": {"low": 64, "high": 16}})
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "search.batch_size" in err and "inverted" in err
    assert trials_of(tmp_path / "store.db") == before
    assert (tmp_path / "store.db").read_bytes() == db_bytes


def test_config_error_creates_no_store(tmp_path):
    bad = write_study(tmp_path, study={"storage": "sqlite:///new.db"}, budget={"unit": "weeks"})
    assert main([str(bad)]) == 2
    assert not (tmp_path / "new.db").exists()


def test_unknown_task_and_bad_flags_exit_2(tmp_path, capsys):
    bad = write_study(tmp_path, objective={"task": "no_such_task"})
    assert main([str(bad)]) == 2
    assert "objective.task" in capsys.readouterr().err
    good = write_study(tmp_path)
    assert main([str(good), "--n-trials", "0"]) == 2
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert list(tmp_path.glob("*.db")) == []


def test_cli_subprocess_runs_from_another_folder_and_resolves_the_store_beside_the_file(tmp_path):
    study = write_study(tmp_path, study={"storage": "sqlite:///rel.db", "n_trials": 2})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SWEEPS_STORAGE", None)
    done = subprocess.run([sys.executable, "-m", "sweeps.run", str(study)], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rel.db").exists() and not (elsewhere / "rel.db").exists()
    assert "[2/2]" in done.stderr and "best val_mse" in done.stdout
    bad = write_study(tmp_path, study={"storgae": "x"})
    done = subprocess.run([sys.executable, "-m", "sweeps.run", str(bad)], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "study.storgae: unknown key (did you mean 'storage'?)" in done.stderr
    assert "Traceback" not in done.stderr


def test_rerun_resumes_and_flags_override_the_file(tmp_path):
    study = write_study(tmp_path, study={"storage": "sqlite:///resume.db"})
    assert main([str(study), "--quiet"]) == 0
    first = trials_of(tmp_path / "resume.db")
    assert main([str(study), "--quiet"]) == 0
    assert trials_of(tmp_path / "resume.db") == first  # nothing re-run, nothing added
    assert main([str(study), "--quiet", "--n-trials", "5"]) == 0
    after = trials_of(tmp_path / "resume.db")
    assert after[:3] == first and len(after) == 5
    other = tmp_path / "other.db"
    assert main([str(study), "--quiet", "--storage", f"sqlite:///{other}", "--study-name", "renamed",
                 "--n-trials", "1"]) == 0
    assert len(trials_of(other, "renamed")) == 1
