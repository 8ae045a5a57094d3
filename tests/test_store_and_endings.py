"""One store however it is named, one exit code however a sweep ends, and what each worker and
each retry trains with: real sweeps on real SQLite (and PostgreSQL where .ci/run gives its URL)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from storage import open_storage
from storage.optuna_private import study_id_of
from storage.workers import register_worker
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.errors import NotReadable
from sweeps.loop.ending import ending_of
from sweeps.loop.runner import open_study, run_sweep
from sweeps.results.existing import open_existing
from sweeps.run import main
from sweeps.search.space import suggest
from sweeps.trial.run_one import trial_seed
from tests.conftest import TINY, merged

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("SWEEPS_TEST_POSTGRES_URL")
if not PG_URL and os.environ.get("CI"):
    raise RuntimeError("SWEEPS_TEST_POSTGRES_URL must be set under CI (see .ci/run)")
needs_pg = pytest.mark.skipif(not PG_URL, reason="set SWEEPS_TEST_POSTGRES_URL to run PostgreSQL tests")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def write_study(folder: Path, name: str = "tiny", **overrides) -> Path:
    """A tiny study file that names its own store, as the shipped examples do."""
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


# --- one precedence: --storage, then $SWEEPS_STORAGE, then study.storage, then <name>.db ---------

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


def test_one_worker_and_the_parent_of_workers_print_the_same_summary(tmp_path, capsys):
    """Both end through `ending.end_sweep`: the same count, best trial and recommendation paragraph
    (here on a complete study, where the parent starts no worker)."""
    study = write_study(tmp_path, study={"n_trials": 3})
    assert main([str(study), "--quiet"]) == 0
    alone = capsys.readouterr().out
    assert main([str(study), "--quiet"]) == 0
    again = capsys.readouterr().out
    assert main([str(study), "--quiet", "--workers", "2"]) == 0
    assert capsys.readouterr().out == again
    summary = alone[alone.index("3 trials finished; best val_mse = "):]
    assert again == f"study complete: 3 of 3 trials; raise --n-trials to continue\n{summary}"
    assert "\n\nRecommendation: train at batch size " in summary


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


# --- a storage value that is not one: exit 2 however it is given, dry run included ------------------

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


# --- how a sweep ends: one table ------------------------------------------------------------------

OVERSHOOT = {
    "study": {"n_trials": 3, "metric": "neg_val_mse", "direction": "maximize"},
    "objective": {"task": "tests.tasks_for_tests:overshoot", "momentum": 0.0},
    "schedule": {"name": "constant"},
    "budget": {"unit": "updates", "per_trial": 30, "eval_every": 2},
    "search": {"batch_size": 8, "base_lr": {"low": 1.0e5, "high": 1.0e6, "log": True}},
}


def test_a_sweep_where_every_trial_diverges_exits_1_and_says_so(tmp_path, no_env, capsys):
    study = write_study(tmp_path, **OVERSHOOT)
    assert main([str(study), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "all 3 trials diverged (loss NaN/inf): lower search.base_lr.high" in err


def test_a_grid_used_up_before_n_trials_exits_0_with_a_note(tmp_path, no_env, capsys):
    study = write_study(tmp_path, study={"n_trials": 5}, sampler={"name": "grid"},
                        search={"batch_size": [16, 64], "base_lr": 0.05})
    assert main([str(study), "--quiet"]) == 0
    assert "note: stopped at 2 of 5 trials: the grid has no more points" in capsys.readouterr().out


def in_memory_study(*states_and_reasons: tuple[TrialState, str | None]) -> optuna.Study:
    study = optuna.create_study()
    for i, (state, reason) in enumerate(states_and_reasons):
        value = 1.0 if state == TrialState.COMPLETE else None
        attrs = {"stop_reason": reason} if reason else {"error": "ValueError: boom"} if state == TrialState.FAIL else {}
        study.add_trial(optuna.create_trial(state=state, value=value, params={"x": float(i)},
                                            distributions={"x": optuna.distributions.FloatDistribution(0, 99)},
                                            user_attrs=attrs))
    return study


@pytest.mark.parametrize(("trials", "n_trials", "code", "says"), [
    ([(TrialState.COMPLETE, "budget")] * 3, 3, 0, ""),
    ([(TrialState.COMPLETE, "budget"), (TrialState.PRUNED, "diverged")], 2, 0, "1 of 2 trials diverged"),
    ([(TrialState.PRUNED, "diverged")] * 5, 5, 1, "all 5 trials diverged (loss NaN/inf)"),
    ([], 9, 1, "no trial finished with a value (0 of 9 finished"),
    ([(TrialState.FAIL, None)] * 2, 4, 1, "last error: ValueError: boom"),
    ([(TrialState.COMPLETE, "budget"), (TrialState.FAIL, None)], 3, 1, "stopped at 1 of 3 trials (1 failed"),
])
def test_every_ending_has_one_code(trials, n_trials, code, says):
    ending = ending_of(in_memory_study(*trials), n_trials)
    assert ending.code == code and says in ending.message
    if code:
        assert ":" in ending.message, "a failure names the likely fix"


# --- retries train with the original's seed; each worker draws its own sampler seed -----------------

def test_a_retried_trial_trains_with_the_seed_of_the_trial_it_retries(tmp_path, tiny_config):
    config = tiny_config(study={"n_trials": 1, "seed": 7})
    target = target_of(config)
    study = open_study(config, target, n_train=256)
    original = study.ask()
    suggest(original, config.search)
    study.tell(original, state=TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[0])
    run_sweep(config, target, show_progress=False)
    retried = optuna.load_study(study_name="tiny", storage=target.storage_url).trials[1]
    assert retried.state == TrialState.COMPLETE
    assert retried.user_attrs["seed"] == trial_seed(7, original.number) != trial_seed(7, retried.number)


def register_concurrently(url: str, study_id: int, n: int) -> list[int]:
    storage = open_storage(url)
    numbers: list[int] = []
    threads = [threading.Thread(target=lambda: numbers.append(register_worker(storage, study_id))) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return numbers


def test_workers_registering_at_once_get_distinct_numbers_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path}/w.db"
    study_id = study_id_of(optuna.create_study(storage=open_storage(url), study_name="w"))
    assert sorted(register_concurrently(url, study_id, 6)) == list(range(6))
    assert register_worker(open_storage(url), study_id + 1) == 0  # numbers count per study


@needs_pg
def test_workers_registering_at_once_get_distinct_numbers_on_postgres():
    name = f"register-{uuid.uuid4().hex[:8]}"
    study_id = study_id_of(optuna.create_study(storage=open_storage(PG_URL), study_name=name))
    try:
        assert sorted(register_concurrently(PG_URL, study_id, 6)) == list(range(6))
    finally:
        optuna.delete_study(study_name=name, storage=PG_URL)


def test_replicas_started_with_the_same_command_draw_different_configurations(tmp_path):
    """Two processes with one command line, as compose replicas start: distinct worker numbers,
    so distinct sampler seeds, recorded on their trials."""
    study = write_study(tmp_path, study={"n_trials": 10}, sampler={"name": "random"})
    env = {k: v for k, v in os.environ.items() if k != "SWEEPS_STORAGE"}
    env.update(PYTHONPATH=str(REPO), SWEEPS_STORAGE=f"sqlite:///{tmp_path}/shared.db")
    procs = [subprocess.Popen([sys.executable, "-m", "sweeps.run", str(study), "--quiet"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    study = optuna.load_study(study_name="tiny", storage=env["SWEEPS_STORAGE"])
    trials = study.get_trials(states=FINISHED)  # a trial closed before it ran records no worker
    seeds = {t.user_attrs["worker"]: t.user_attrs["sampler_seed"] for t in trials}
    assert set(seeds) == {0, 1} and seeds[0] != seeds[1]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)


# --- every optimizer under every budget unit ------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize(("unit", "per_trial", "eval_every"), [
    ("updates", 20, 10), ("examples", 640, 320), ("epochs", 2, 1), ("seconds", 0.3, 0.15)])
def test_each_optimizer_under_each_budget_unit(tmp_path, sweep, optimizer, unit, per_trial, eval_every):
    config = parse_config(merged(TINY, {
        "study": {"n_trials": 1}, "objective": {"optimizer": optimizer},
        "budget": {"unit": unit, "per_trial": per_trial, "eval_every": eval_every},
        "search": {"batch_size": [32], "base_lr": {"low": 0.001, "high": 0.01, "log": True}}}), tmp_path)
    trial = sweep(config).trials[0]
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
    assert trial.user_attrs["updates"] > 0


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


def test_the_probe_rejects_a_storage_value_before_probing(tmp_path, no_env, capsys):
    from sweeps import probe

    assert probe.main([str(write_study(tmp_path)), "--storage", "results.db"]) == 2
    captured = capsys.readouterr()
    assert "'sqlite:///results.db'" in captured.err and "tried" not in captured.out  # nothing probed
