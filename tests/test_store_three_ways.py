"""The store, given in one of three ways (`--storage`, then `$SWEEPS_STORAGE`, then the study file's
`study.storage`) or in none (`<name>.db` beside the study file): one precedence for every command.

What it specifies, in this order:

1. every command that opens an existing study finds its store each way, and with none of them
   looks beside the study file, where this store is not: exit 4 (no such study) or 3 (no store);
   best and report show the horizons each way; a pipe closed early ends with its exit code;
2. `sweeps run` writes where each level of the precedence says, and so do its workers (SQLite,
   and PostgreSQL where .ci/run gives its URL) and `sweeps probe`; report, dashboard and
   screenshot open the store by the same precedence;
3. a storage value that is not a usable URL exits 2 however it is given, dry run, report and
   probe included; an unreachable server stays exit 3.
"""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from sweeps import best, confirm, exits, report, run, studies
from sweeps.errors import NotReadable
from sweeps.results.existing import open_existing
from sweeps.run import main
from tests.conftest import PG_URL, TINY, merged, needs_pg

REPO = Path(__file__).resolve().parents[1]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

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


# --- 1. the commands that open an existing study ---------------------------------------------------

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


# --- 2. where `sweeps run`, its workers and `sweeps probe` write ----------------------------------

def write_study(folder: Path, name: str = "tiny", **overrides) -> Path:
    """A tiny study file that names its own store (from_file.db), as the shipped examples do."""
    data = merged(merged(TINY, {"study": {"name": name, "storage": "sqlite:///from_file.db"}}), overrides)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def finished_in(db: Path, name: str = "tiny") -> int:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return len(study.get_trials(states=FINISHED))


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    return monkeypatch


def test_each_level_of_the_storage_precedence_for_run(tmp_path, no_env, capsys):
    study = write_study(tmp_path, study={"n_trials": 1})
    assert main([str(study), "--quiet"]) == 0  # study.storage
    assert finished_in(tmp_path / "from_file.db") == 1

    no_env.setenv("SWEEPS_STORAGE", f"sqlite:///{tmp_path}/from_env.db")  # env beats the file
    assert main([str(study), "--quiet"]) == 0
    assert finished_in(tmp_path / "from_env.db") == 1

    assert main([str(study), "--quiet", "--storage", f"sqlite:///{tmp_path}/from_flag.db"]) == 0  # flag beats env
    assert finished_in(tmp_path / "from_flag.db") == 1
    assert finished_in(tmp_path / "from_file.db") == 1 and finished_in(tmp_path / "from_env.db") == 1

    no_env.delenv("SWEEPS_STORAGE")
    unnamed = tmp_path / "plain"
    unnamed.mkdir()
    path = unnamed / "plain.yaml"
    path.write_text(yaml.safe_dump(merged(TINY, {"study": {"name": "plain", "n_trials": 1}})))
    assert main([str(path), "--quiet"]) == 0  # <name>.db beside the file
    assert finished_in(unnamed / "plain.db", "plain") == 1


def test_report_dashboard_and_screenshot_open_the_store_by_the_same_precedence(tmp_path, no_env):
    study = write_study(tmp_path, study={"n_trials": 1})
    env_db = tmp_path / "from_env.db"
    assert main([str(study), "--quiet", "--storage", f"sqlite:///{env_db}"]) == 0
    with pytest.raises(NotReadable) as raised:  # the file's own store does not exist
        open_existing(str(study))
    assert raised.value.code == 3 and "from_file.db" in str(raised.value)
    no_env.setenv("SWEEPS_STORAGE", f"sqlite:///{env_db}")
    assert open_existing(str(study)).target.storage_url == f"sqlite:///{env_db.resolve()}"
    flag_db = tmp_path / "elsewhere.db"
    with pytest.raises(NotReadable):
        open_existing(str(study), f"sqlite:///{flag_db}")  # the flag beats the environment
    from sweeps.report import main as report_main
    assert report_main([str(study), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r").is_dir()


def test_workers_of_a_sqlite_sweep_write_where_the_parent_resolved(tmp_path, run_here):
    """The parent runs in this process, from the repository root; its two workers are real processes."""
    study = write_study(tmp_path, study={"n_trials": 4})
    other = tmp_path / "other.db"
    done = run_here([str(study), "--quiet", "--workers", "2", "--storage", f"sqlite:///{other}"], cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert finished_in(other) == 4
    assert not (tmp_path / "from_file.db").exists()
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{other}").trials
    assert {t.user_attrs["worker"] for t in trials if t.state in FINISHED} <= {0, 1}
    assert {t.user_attrs["sampler_seed"] for t in trials if t.user_attrs["worker"] == 0} == {0}
    # the parent of --workers ends as one worker does: the best trial, then the recommendation
    assert "4 trials finished; best val_mse = " in done.stdout
    assert "\nRecommendation: train at batch size " in done.stdout


@needs_pg
def test_the_digits_example_with_three_workers_lands_in_postgres(tmp_path, run_here):
    """The parent runs in this process, from the repository root; its three workers are real processes."""
    name = f"digits-w3-{uuid.uuid4().hex[:8]}"
    db = REPO / "examples" / "digits.db"
    before = db.stat().st_mtime_ns if db.exists() else None
    try:
        done = run_here(["examples/digits.yaml", "--workers", "3", "--n-trials", "6", "--quiet",
                         "--storage", PG_URL, "--study-name", name], cwd=REPO)
        assert done.returncode == 0, done.stderr
        assert "6 trials finished" in done.stdout
        study = optuna.load_study(study_name=name, storage=PG_URL)
        assert len(study.get_trials(states=FINISHED)) == 6
        # the trials that trained: one asked ahead and closed when the sweep ended never got a worker
        ran = study.get_trials(states=FINISHED)
        assert len({t.user_attrs["worker"] for t in ran}) >= 2, "replicas must not share a seed"
        assert (db.stat().st_mtime_ns if db.exists() else None) == before
    finally:
        optuna.delete_study(study_name=name, storage=PG_URL)
        for folder in (REPO / "examples").glob(f"{name}-*"):
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("given", ["flag", "env", "file"])
def test_the_probe_stores_its_limit_where_the_precedence_says(tmp_path, no_env, capsys, given):
    from sweeps import probe

    study = write_study(tmp_path)  # the file names from_file.db
    chosen = {"flag": tmp_path / "flag.db", "env": tmp_path / "env.db", "file": tmp_path / "from_file.db"}[given]
    args = [str(study), "--limit", "16"]
    if given == "flag":
        args += ["--storage", f"sqlite:///{chosen}"]
        no_env.setenv("SWEEPS_STORAGE", f"sqlite:///{tmp_path}/env.db")  # the flag wins over it
    if given == "env":
        no_env.setenv("SWEEPS_STORAGE", f"sqlite:///{chosen}")
    assert probe.main(args) == 0
    stored = optuna.load_study(study_name="tiny", storage=f"sqlite:///{chosen}").user_attrs
    assert stored["probed_micro_batch"] == {"cpu": 16}
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [chosen.name]


# --- 3. a storage value that is not one: exit 2 however it is given, dry run included ----------------

@pytest.mark.parametrize("value", ["digits.db", "mongodb://localhost/sweeps"])
@pytest.mark.parametrize("given", ["file", "flag", "env"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_storage_value_that_is_not_a_usable_url_exits_2(tmp_path, no_env, capsys, value, given, dry_run):
    study = write_study(tmp_path, study={"storage": value} if given == "file" else {})
    args = [str(study), "--quiet", *(["--dry-run"] if dry_run else [])]
    args += ["--storage", value] if given == "flag" else []
    if given == "env":
        no_env.setenv("SWEEPS_STORAGE", value)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    where = {"file": "study.storage", "flag": "--storage", "env": "$SWEEPS_STORAGE"}[given]
    assert err.startswith(f"error: {where}: ")
    assert ("'sqlite:///digits.db'" in err) if value == "digits.db" else ("'mongodb' is not supported" in err)
    assert not list(tmp_path.glob("*.db"))


def test_report_exits_2_on_a_storage_value_that_is_not_a_url(tmp_path, no_env, capsys):
    from sweeps.report import main as report_main
    study = write_study(tmp_path)
    assert report_main([str(study), "--storage", "results.db"]) == 2
    assert "'sqlite:///results.db'" in capsys.readouterr().err


def test_an_unreachable_server_stays_exit_3(tmp_path, no_env, capsys):
    study = write_study(tmp_path)
    assert main([str(study), "--quiet", "--storage", "postgresql+psycopg://u@127.0.0.1:1/db"]) == 3


def test_the_probe_rejects_a_storage_value_before_probing(tmp_path, no_env, capsys):
    from sweeps import probe

    assert probe.main([str(write_study(tmp_path)), "--storage", "results.db"]) == 2
    captured = capsys.readouterr()
    assert "'sqlite:///results.db'" in captured.err and "tried" not in captured.out  # nothing probed
