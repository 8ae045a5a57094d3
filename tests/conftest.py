"""Shared helpers: tiny real studies in a temporary SQLite store."""

from __future__ import annotations

import copy
import fcntl
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from sqlalchemy.pool import NullPool

from sweeps.config.study_file import SweepConfig, parse_config
from sweeps.config.target import target_of
from sweeps.loop.runner import run_sweep

REPO = Path(__file__).resolve().parents[1]
# The PostgreSQL server of the tests that need one (.ci/run sets it; under CI a missing URL is an error, not skips)
PG_URL = os.environ.get("SWEEPS_TEST_POSTGRES_URL")
if not PG_URL and os.environ.get("CI"):
    raise RuntimeError("SWEEPS_TEST_POSTGRES_URL must be set under CI (see .ci/run)")
needs_pg = pytest.mark.skipif(not PG_URL, reason="set SWEEPS_TEST_POSTGRES_URL to run PostgreSQL tests")

TINY = {
    "study": {"name": "tiny", "metric": "val_mse", "direction": "minimize", "n_trials": 3, "seed": 0},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
    "objective": {"task": "regression", "optimizer": "sgd", "options": {"dim": 8, "n_train": 256, "n_val": 64}},
    "budget": {"unit": "updates", "per_trial": 40, "eval_every": 10},
    "search": {"batch_size": [16, 64], "base_lr": {"low": 0.01, "high": 0.1, "log": True}},
}


# The longest files first. `--dist loadfile` hands whole files to the two workers in collection
# order, each taking the next as it frees up: a long file collected last (test_workers.py, by its
# name) ran alone at the end while the other worker idled. Longest first, the short files fill in.
LONGEST_FIRST = ("test_compose_up.py", "test_workers.py", "test_slurm.py", "test_pooler.py", "test_horizons_study.py",
                 "test_scale_out.py", "test_dashboard.py", "test_lr_prior.py", "test_progress.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def merged(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def tiny_config(tmp_path: Path):
    """make(**section_overrides) -> a validated config whose store lives in tmp_path."""

    def make(**overrides) -> SweepConfig:
        return parse_config(merged(TINY, overrides), tmp_path)

    return make


@pytest.fixture
def sweep():
    def run(config: SweepConfig, **target):
        return run_sweep(config, target_of(config, **target), show_progress=False)

    return run


def engine(url: str) -> sqlalchemy.Engine:
    """A test's own engine on a store: each connection closes when it is returned (NullPool). A pooled
    engine keeps its connection open until the garbage collector finds it, so a test polling a
    PostgreSQL store every 0.2 s held dozens (CI ran the server out of its 100 connections)."""
    return sqlalchemy.create_engine(url, poolclass=NullPool)


def load_study(name: str, url: str) -> optuna.Study:
    """`optuna.load_study` over `engine`'s connections, for a test that reads what a sweep stored."""
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool}, skip_compatibility_check=True)
    return optuna.load_study(study_name=name, storage=storage)


def synthetic_study(storage: str | None = None, name: str = "synthetic", direction: str = "maximize") -> optuna.Study:
    """An empty study with the study attributes a sweep records (metric name, examples units), for
    tests that add trials by hand."""
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_accuracy"])
    study.set_user_attr("budget_unit", "examples")
    study.set_user_attr("step_unit", "examples")
    return study


def in_process(main: Callable[[list[str]], int | None], args: list[str], capture) -> subprocess.CompletedProcess:
    """`main(args)` of an entry point in this process, read as its subprocess would be: the exit code
    (returned, or raised with SystemExit as argparse does), stdout, and stderr with the warnings a plain
    interpreter would print there (pytest would otherwise collect them unseen). For the cases where the
    process itself is not the point; each entry point keeps a real subprocess test of its own. The
    caller sets the working folder and environment (monkeypatch.chdir, monkeypatch.setenv). `capture`:
    capsys, or capfd where child processes write to the same file descriptors."""
    capture.readouterr()  # what came before is not this command's output
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # the interpreter's default filters, not pytest's
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        try:
            code = main(args)
        except SystemExit as stop:
            code = stop.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed on stderr, exit 1
        print(code, file=sys.stderr)
        code = 1
    out, err = capture.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return subprocess.CompletedProcess(["main", *args], code, out, err)


@pytest.fixture
def run_here(monkeypatch, capfd):
    """`python -m sweeps.run ARGS` with this process as that process, for a run a test only reads (the parent
    of --workers, say): (args, cwd=None, storage=None) -> its exit code, stdout and stderr, its real worker
    processes' included (they write to the file descriptors capfd collects). Its workers get PYTHONPATH=the
    repository, as the tests' subprocesses do; $SWEEPS_STORAGE is `storage`, unset without it."""
    from sweeps.run import main

    monkeypatch.setenv("PYTHONPATH", str(REPO))

    def run(args: list[str], cwd: Path | None = None, storage: str | None = None) -> subprocess.CompletedProcess:
        with monkeypatch.context() as m:
            if cwd is not None:
                m.chdir(cwd)
            if storage is None:
                m.delenv("SWEEPS_STORAGE", raising=False)
            else:
                m.setenv("SWEEPS_STORAGE", storage)
            return in_process(main, args, capfd)

    return run


PG_RESTART_LOCK = Path(tempfile.gettempdir()) / "sweeps-tests-postgres-restart.lock"


@contextmanager
def postgres_held(exclusive: bool):
    """Across xdist workers: a test that restarts the local PostgreSQL server holds this lock
    exclusively, and tests that cannot ride out a restart (the Slurm cluster's) hold it shared, so
    the restart waits for them (CI saw a Slurm test fail on 'the database system is shutting down')."""
    with open(PG_RESTART_LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def postgres_restart():
    """For a test that restarts the local PostgreSQL server (`postgres_held`)."""
    with postgres_held(exclusive=True):
        yield


def uses_postgres(item: pytest.Item) -> bool:
    """Marked `needs_pg` (or a parameter so marked): the test talks to the local server."""
    return any(mark == needs_pg.mark for mark in item.iter_markers("skipif"))


@pytest.fixture(autouse=True)
def postgres_shared(request):
    """Every PostgreSQL test holds the server shared, so a test that restarts it (exclusive) waits
    for the other test process's PostgreSQL test to end and never restarts it under one (a restart
    under another file's test failed it in CI). A restarting test itself takes only its own lock."""
    if not PG_URL or "postgres_restart" in request.fixturenames or not uses_postgres(request.node):
        yield
        return
    with postgres_held(exclusive=False):
        yield
