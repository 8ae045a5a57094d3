"""`python -m sweeps.run`: dry run, exit codes, the store left untouched by bad input, resume."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
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
    assert by_batch[64][1:5] == ["4", "40", "10.0", "2560"]  # 40 updates = 10 epochs of 4 (2.5 above: one format)
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


def test_cli_subprocess_runs_from_another_folder_and_resolves_the_store_beside_the_file(tmp_path, run_here):
    study = write_study(tmp_path, study={"storage": "sqlite:///rel.db", "n_trials": 2})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SWEEPS_STORAGE", None)
    done = subprocess.run([sys.executable, "-m", "sweeps.run", str(study)], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rel.db").exists() and not (elsewhere / "rel.db").exists()
    assert "2/2 done" in done.stderr and "best val_mse" in done.stdout
    assert "Recommendation: train at batch size" in done.stdout, "the end of a sweep gives the report's answer"
    bad = write_study(tmp_path, study={"storgae": "x"})
    done = run_here([str(bad)], cwd=elsewhere)  # in this process: an escaping exception would fail the test
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


# --- The dry-run plan, checked by hand ---


def plan_table(out: str) -> tuple[list[str], dict[int, list[str]]]:
    lines = [line.split() for line in out.splitlines()]
    header = next(cells for cells in lines if cells[:1] == ["batch_size"])
    rows = {int(cells[0]): cells for cells in lines if cells and cells[0].isdigit()}
    return header, rows


def store_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("store: "))


def test_dry_run_of_the_digits_example_by_hand(tmp_path, monkeypatch, capsys):
    """N = 1438, 60,000 examples per trial, epochs capped at 60, base LR sqrt(1e-3 x 1), B0 = 64."""
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    study = tmp_path / "digits.yaml"
    shutil.copy(REPO / "examples" / "digits.yaml", study)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main([str(study), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "training examples N = 1438; iterations per epoch = ceil(N / B)" in out
    assert "reference batch size 64" in out and "epochs capped at 60" in out
    header, rows = plan_table(out)
    assert header == ["batch_size", "iterations_per_epoch", "updates", "epochs", "examples",
                      "lr_none", "lr_linear", "lr_sqrt"]
    assert sorted(rows) == [16, 32, 64, 128, 256, 512]
    # 60000 = 41 x 1438 + 1042: 41 epochs, then 1042 // B batches; the budget binds before 60 epochs.
    assert rows[16][1:5] == ["90", "3755", "41.72", "59998"]
    assert rows[64][1:5] == ["23", "959", "41.70", "59982"]  # one format per column
    assert rows[512][1:5] == ["3", "125", "41.67", "59982"]
    # base LR 0.03162: linear x B/64, sqrt x sqrt(B/64).
    assert rows[16][5:] == ["0.03162", "0.007906", "0.01581"]
    assert rows[64][5:] == ["0.03162", "0.031623", "0.03162"]
    assert rows[512][5:] == ["0.03162", "0.252982", "0.08944"]
    # The relative sqlite:///digits.db resolves beside the YAML file, and nothing is created.
    assert store_line(out) == f"store: sqlite:///{(tmp_path / 'digits.db').resolve()} (not opened: dry run)"
    assert list(tmp_path.rglob("*.db*")) == []


def test_dry_run_when_searched_epochs_end_the_trial_first(tmp_path, capsys):
    study = write_study(tmp_path, budget={"per_trial": 1000, "eval_every": 100},
                        objective={"optimizer": "adam"},
                        search={"epochs": {"low": 1, "high": 3}, "coupling": ["none", "adam_sqrt"]})
    assert main([str(study), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "epochs capped at 3" in out and "reference batch size 16" in out
    header, rows = plan_table(out)
    assert header[-5:] == ["lr_none", "lr_adam_sqrt", "beta1_adam_sqrt", "beta2_adam_sqrt", "eps_adam_sqrt"]
    assert rows[16][1:5] == ["16", "48", "3", "768"]  # N = 256: 3 epochs of 16 updates, 3 x N examples
    assert rows[64][1:5] == ["4", "12", "3", "768"]
    assert float(rows[64][6]) == pytest.approx(2 * float(rows[64][5]), rel=1e-3)  # sqrt(64 / 16)


def test_dry_run_with_an_epoch_budget_shows_fractional_epochs(tmp_path, capsys):
    study = write_study(tmp_path, budget={"unit": "epochs", "per_trial": 2.5, "eval_every": 0.5},
                        search={"batch_size": [16, 64, 100]})
    assert main([str(study), "--dry-run"]) == 0
    _, rows = plan_table(capsys.readouterr().out)
    assert rows[16][1:5] == ["16", "40", "2.50", "640"]  # one format per column
    assert rows[64][1:5] == ["4", "10", "2.50", "640"]
    assert rows[100][1:5] == ["3", "7", "2.33", "612"]  # floor(2.5 x 3) = 7 updates: 2 epochs + one batch of 100


def test_dry_run_with_a_seconds_budget_times_the_horizon(tmp_path, capsys):
    study = write_study(tmp_path, budget={"unit": "seconds", "per_trial": 2, "eval_every": 0.5})
    assert main([str(study), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "budget per trial: 2 seconds, evaluated every 0.5 seconds" in out
    _, rows = plan_table(out)
    assert rows[64][1:5] == ["4", "timed", "timed", "timed"]


def test_dry_run_store_location(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    study = write_study(tmp_path)  # no storage key: <study name>.db beside the file
    assert main([str(study), "--dry-run"]) == 0
    assert store_line(capsys.readouterr().out).startswith(f"store: sqlite:///{(tmp_path / 'tiny.db').resolve()} ")
    monkeypatch.setenv("SWEEPS_STORAGE", "sqlite:///from_env.db")
    assert main([str(study), "--dry-run"]) == 0
    assert f"sqlite:///{(tmp_path / 'from_env.db').resolve()} " in store_line(capsys.readouterr().out)
    assert main([str(study), "--dry-run", "--storage", f"sqlite:///{tmp_path}/flag.db"]) == 0
    assert f"sqlite:///{(tmp_path / 'flag.db').resolve()} " in store_line(capsys.readouterr().out)
    assert list(tmp_path.glob("*.db*")) == []


# --- Bad study files against an existing store: exit 2, the key path, nothing written ---


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory) -> Path:
    """A finished 3-trial study, made once; each test works on its own copy."""
    folder = tmp_path_factory.mktemp("seed")
    study = write_study(folder, study={"storage": "sqlite:///seed.db"})  # the file's URL wins over $SWEEPS_STORAGE
    assert main([str(study), "--quiet"]) == 0
    return folder / "seed.db"


def copy_store(source: Path, target: Path) -> Path:
    """A consistent copy, WAL content included (the seeding process may still hold a connection)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return target


def dump(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def cli(args: list[str], capsys) -> tuple[object, str]:
    """Exit code and stderr of an in-process run; an uncaught exception is reported, not raised."""
    try:
        code = main(args)
    except Exception as err:  # a crash instead of exit code 2 is what some of these tests catch
        code = f"uncaught {type(err).__name__}: {err}"
    return code, capsys.readouterr().err


BROKEN = [
    ({"study": {"storgae": "sqlite:///x.db"}}, "study.storgae: unknown key (did you mean 'storage'?)"),
    ({"search": {"batch_size": {"low": 64, "high": 16}}}, "search.batch_size: empty or inverted range"),
    ({"search": {"batch_size": [16, 0]}}, "search.batch_size: batch sizes must be >= 1"),
    ({"search": {"coupling": []}}, "search.coupling: must hold at least one rule"),
    ({"study": {"n_trials": "six"}}, "study.n_trials: expected an integer"),
    ({"objective": {"task": "no_such_task"}}, "objective.task"),
    ({"budget": {"unit": "examples", "per_trial": 32, "eval_every": 32}}, "budget.per_trial"),
    ({"budget": {"unit": "epochs", "per_trial": 0.01, "eval_every": 0.01}}, "budget.per_trial"),  # needs N
    ({"search": {"coupling": "adam_sqrt"}}, "search.coupling"),
    ({"search": {"epochs": []}}, "search.epochs"),
    ({"search": {"base_lr": float("inf")}}, "search.base_lr"),
    ({"budget": {"unit": "epochs", "per_trial": float("inf"), "eval_every": 1}}, "budget.per_trial"),
]


@pytest.mark.parametrize(("overrides", "message"), BROKEN)
def test_broken_study_file_exits_2_and_writes_nothing(overrides, message, seeded_store, tmp_path, monkeypatch,
                                                      capsys):
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    store = copy_store(seeded_store, tmp_path / "store.db")
    before, trials = dump(store), trials_of(store)
    assert len(trials) == 3
    study = write_study(tmp_path, **merged({"study": {"storage": "sqlite:///store.db", "n_trials": 6}}, overrides))
    for extra in ([], ["--dry-run"]):
        code, err = cli([str(study), "--quiet", *extra], capsys)
        assert code == 2, (extra, err)
        assert message in err and str(study) in err
        assert dump(store) == before and trials_of(store) == trials
    code, err = cli([str(study), "--quiet", "--storage", f"sqlite:///{tmp_path}/new.db"], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "new.db").exists()
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["store.db"]


def test_dry_run_leaves_an_existing_store_byte_for_byte(seeded_store, tmp_path, capsys):
    store = copy_store(seeded_store, tmp_path / "store.db")
    before = store.read_bytes()
    study = write_study(tmp_path, study={"storage": "sqlite:///store.db", "n_trials": 6})
    assert main([str(study), "--dry-run"]) == 0
    assert "(not opened: dry run)" in capsys.readouterr().out
    assert store.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.db", "study.yaml"]  # no -wal / -shm either
