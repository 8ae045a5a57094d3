"""Many workers, one study: real worker processes on the real PostgreSQL (and SQLite).

The PostgreSQL URL comes from SWEEPS_TEST_POSTGRES_URL, which .ci/run sets; under CI a missing
URL fails these tests instead of skipping them.

Where a test signals or kills a process, every process is a real `python -m sweeps.run`; where
it only reads what a run of --workers leaves, the parent runs in this process (`parent`) and its
workers are real child processes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState
from sqlalchemy import select

from storage.workers import WORKERS
from tests.conftest import PG_URL, engine, load_study, merged, needs_pg

REPO = Path(__file__).resolve().parents[1]
PG_VERSION = (sorted(os.listdir("/etc/postgresql")) or ["15"])[-1] if os.path.isdir("/etc/postgresql") else "15"
CREATED: list[str] = []  # PostgreSQL studies of this module, deleted after each test


def unique(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    CREATED.append(name)
    return name


@pytest.fixture(autouse=True)
def delete_pg_studies():
    yield
    while CREATED:
        name = CREATED.pop()
        try:
            optuna.delete_study(study_name=name, storage=PG_URL)
        except KeyError:  # never created
            pass


def study_file(folder: Path, name: str, n_trials: int, seconds: float | None = None, **study) -> Path:
    budget = ({"unit": "seconds", "per_trial": seconds, "eval_every": seconds / 4} if seconds
              else {"unit": "updates", "per_trial": 30, "eval_every": 10})
    options = {"dim": 8, "n_train": 256, "n_val": 64}
    data = {
        "study": {"name": name, "metric": "val_mse", "direction": "minimize", "n_trials": n_trials,
                  "heartbeat_interval": 1, "grace_period": 3, **study},
        "sampler": {"name": "tpe", "n_startup_trials": 4},
        "pruner": {"name": "none"},
        # a seconds trial paced (mostly asleep): it lasts as long without keeping a core busy
        "objective": ({"task": "tests.tasks_for_tests:regression_paced", "options": {**options, "pace": 0.005}}
                      if seconds else {"task": "regression", "options": options}),
        "budget": budget,
        "search": {"batch_size": [8, 16, 32, 64], "base_lr": {"low": 1e-3, "high": 0.1, "log": True}},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_peers(folder: Path, workers: int) -> dict:
    """An `objective` section whose task is the regression task, each of `workers` workers holding a
    trial before any can finish the study (`tests.tasks_for_tests:regression_with_peers`): for a test
    that asserts every worker trained, on a study small enough for one worker to end alone."""
    return {"task": "tests.tasks_for_tests:regression_with_peers",
            "options": {"started": str(folder / "workers-started"), "peers": workers}}


def start(path: Path, *args: str, storage: str | None = None, quiet: bool = True) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if storage:
        env["SWEEPS_STORAGE"] = storage
    return subprocess.Popen([sys.executable, "-m", "sweeps.run", str(path), *(["--quiet"] if quiet else []), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def parent(run_here):
    """(path, *args, storage=URL) -> `python -m sweeps.run PATH --quiet ARGS` as `start` runs it, with this
    process as the parent of --workers: its exit code, and stdout and stderr, its real worker processes'
    included."""

    def run(path: Path, *args: str, storage: str) -> subprocess.CompletedProcess:
        return run_here([str(path), "--quiet", *args], storage=storage)

    return run


def load(name: str, storage: str) -> optuna.Study:
    return load_study(name, storage)


def wait_for_running(name: str, storage: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if load(name, storage).get_trials(states=(TrialState.RUNNING,)):
                return
        except KeyError:  # the study does not exist yet
            pass
        time.sleep(0.2)
    raise AssertionError("no trial started")


def assert_exactly(study: optuna.Study, n_trials: int) -> None:
    """The study finished exactly `n_trials` and left none open; else every trial, as the store says."""
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    shown = [(t.number, t.state.name, t.system_attrs.get("failed_trial"), t.user_attrs.get("error"),
              t.datetime_start and t.datetime_start.strftime("%H:%M:%S.%f"),
              t.datetime_complete and t.datetime_complete.strftime("%H:%M:%S.%f")) for t in trials]
    assert len(finished) == n_trials, shown
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], shown


@needs_pg
def test_four_workers_share_one_study_on_postgres(tmp_path, parent):
    name = unique("four")
    path = study_file(tmp_path, name, n_trials=12)
    done = parent(path, "--workers", "4", storage=PG_URL)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, err
    study = load(name, PG_URL)
    assert_exactly(study, 12)  # no overshoot
    # The only failed trials allowed: asked in a race for the last slot and closed before they ran.
    # No race at all (none of them) is a correct outcome too, so this list may well be empty.
    surplus = study.get_trials(states=(TrialState.FAIL,))
    ran_and_failed = [(t.number, t.user_attrs.get("error")) for t in surplus
                      if not t.user_attrs.get("error", "").startswith("not started") or t.intermediate_values]
    assert not ran_and_failed
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    configs = Counter((t.user_attrs["batch_size"], t.params["base_lr"]) for t in finished)
    assert max(configs.values()) == 1  # no configuration proposed twice
    assert "12 trials finished" in out


@needs_pg
def test_a_killed_worker_costs_only_its_trial(tmp_path, run_here):
    """SIGKILL mid-trial: the survivor (here, this process), already running, fails the dead worker's
    trials once their heartbeat is `grace_period` old, re-runs their configurations, and the study ends
    exact."""
    name = unique("kill")
    path = study_file(tmp_path, name, n_trials=4, seconds=1.0, grace_period=8)
    victim = start(path, storage=PG_URL)
    wait_for_running(name, PG_URL)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    held = load(name, PG_URL).get_trials(states=(TrialState.RUNNING,))
    assert held, "the killed worker leaves its trials RUNNING"
    # The survivor takes the free slots at once; the dead worker's trials are not stale yet, so it
    # waits for them (instead of ending the study short) until their grace period runs out.
    survivor = run_here([str(path), "--quiet"], storage=PG_URL)
    assert survivor.returncode == 0, survivor.stderr
    study = load(name, PG_URL)
    assert_exactly(study, 4)
    failed = {t.number: t for t in study.get_trials(states=(TrialState.FAIL,))}
    assert set(failed) == {t.number for t in held}
    for number, dead in failed.items():
        retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
        assert retries[0].params.items() >= dead.params.items()  # the same configuration, re-run


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_a_trial_asked_and_never_beaten_is_failed_and_run_again(tmp_path, store):
    """A worker that died between its ask and its first heartbeat (or an ask whose commit reached the
    store while its reply was lost to a server restart, and was asked again) leaves a RUNNING trial
    with no heartbeat, which Optuna never judges stale: a worker waiting for the last slot dates it,
    fails it a grace period later and runs its configuration again, so the study ends exact instead of
    waiting for ever (one compose run hung at 78 of 80 trials so, 'waiting for 0 running trials')."""
    name = unique("unbeaten") if store == "postgresql" else "unbeaten"
    url = PG_URL if store == "postgresql" else f"sqlite:///{tmp_path}/s.db"
    path = study_file(tmp_path, name, n_trials=3)
    first = start(path, "--n-trials", "1", storage=url)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    study = load(name, url)
    orphan = study.ask(fixed_distributions=study.trials[0].distributions)  # asked, never beaten
    worker = start(path, storage=url)
    try:
        _, err = worker.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise AssertionError("the worker waits for ever for a trial that has no heartbeat") from None
    assert worker.returncode == 0, err
    study = load(name, url)
    assert_exactly(study, 3)
    assert study.trials[orphan.number].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == orphan.params  # the same configuration, run again


@needs_pg
def test_sigterm_closes_the_trial_and_exits_quickly(tmp_path, run_here):
    name = unique("term")
    # 2 s trials: SIGTERM comes well inside the first (it is sent as soon as it shows RUNNING)
    path = study_file(tmp_path, name, n_trials=2, seconds=2.0)
    worker = start(path, storage=PG_URL)
    wait_for_running(name, PG_URL)
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    study = load(name, PG_URL)
    # once seen exit 0 with nothing on stderr in CI (not reproduced): say what the study held then
    states = [(t.number, t.state.name) for t in study.get_trials()]
    assert worker.returncode == 143, f"stderr: {err!r}; stdout: {out[-1500:]!r}; trials: {states}"
    assert "terminated" in err and "Traceback" not in err
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert study.get_trials(states=(TrialState.FAIL,))
    assert study.get_trials(states=(TrialState.WAITING,)), "the closed trial is queued again"
    again = run_here([str(path), "--quiet"], storage=PG_URL)  # the resumed run, in this process
    assert again.returncode == 0, again.stderr
    assert_exactly(load(name, PG_URL), 2)  # the closed trial, run again, and one more


@needs_pg
def test_sigterm_stops_every_worker_of_workers_n(tmp_path, run_here):
    name = unique("termn")
    path = study_file(tmp_path, name, n_trials=6, seconds=2.0)
    parent = start(path, "--workers", "2", storage=PG_URL)
    wait_for_running(name, PG_URL)
    time.sleep(1.0)
    sent = time.monotonic()
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert parent.returncode == 143, err
    assert "Traceback" not in err
    study = load(name, PG_URL)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    # what the stopped workers left (their closed trials queued again) resumes to exactly the trials asked;
    # in this process, one worker
    again = run_here([str(path), "--quiet", "--n-trials", "4"], storage=PG_URL)
    assert again.returncode == 0, again.stderr
    assert_exactly(load(name, PG_URL), 4)


needs_pg_ctl = pytest.mark.skipif(shutil.which("pg_ctlcluster") is None,
                                  reason="needs the local PostgreSQL cluster's pg_ctlcluster")


def pg_ctl(action: str) -> None:
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", action], check=True,
                   capture_output=True, timeout=60)


@needs_pg
def test_a_postgres_test_holds_the_server_against_a_restart(request):
    """Every test marked needs_pg holds the restart lock shared while it runs (conftest
    `postgres_shared`), so a restarting test, which takes it exclusively, waits for it."""
    import fcntl

    from tests.conftest import PG_RESTART_LOCK, uses_postgres

    assert uses_postgres(request.node)
    with open(PG_RESTART_LOCK) as other:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)  # another reader is no conflict
        fcntl.flock(other, fcntl.LOCK_UN)


def restart_postgres(down_for: float) -> None:
    """Stop the local server, keep it down `down_for` seconds, start it again (`postgres_restart`)."""
    pg_ctl("stop")
    time.sleep(down_for)
    pg_ctl("start")


def ensure_postgres_running() -> None:
    status = subprocess.run(["pg_ctlcluster", PG_VERSION, "main", "status"], capture_output=True)
    if status.returncode != 0:
        pg_ctl("start")


@needs_pg
@needs_pg_ctl
def test_workers_ride_out_a_database_restart(tmp_path, postgres_restart):
    """The server goes away for 3 s mid-sweep: storage calls retry with backoff, nothing is lost or
    written twice."""
    name = unique("restart")
    path = study_file(tmp_path, name, n_trials=6, seconds=1.0, heartbeat_interval=1, grace_period=30)
    workers = [start(path, storage=PG_URL) for _ in range(2)]
    try:
        wait_for_running(name, PG_URL)
        time.sleep(1.5)
        restart_postgres(down_for=3.0)
        errs = [w.communicate(timeout=300)[1] for w in workers]
    finally:
        ensure_postgres_running()
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert [w.returncode for w in workers] == [0, 0], errs
    assert any("retrying" in e or "heartbeat" in e for e in errs), "the outage was not noticed"
    study = load(name, PG_URL)
    assert_exactly(study, 6)
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):  # each finished trial's record is whole
        assert trial.user_attrs["stop_reason"] in {"budget", "epochs", "early_stopping"}
        assert trial.intermediate_values


@needs_pg
@needs_pg_ctl
def test_three_fused_workers_on_a_total_ride_out_a_database_restart(tmp_path, postgres_restart):
    """Fused groups (the default for 20 trials), a total budget and --workers 3, with the server
    away for 3 s once trials hold reservations: every worker ends 0 and the books balance. By hand,
    such a restart ended a worker waiting on the total (its in-flight check read trials without a
    retry) in 3 of 11 runs. (In this file, beside its other restart: in test_ledger.py it restarted
    the server while this file's tests ran in the other test process, and failed two of them.)"""
    from sweeps.trial.record import TrialRecord
    from tests.test_ledger import VARIED, assert_books_balance, ledger_of, wait_for_reservation, write

    name = unique("ledgerpg")
    held = {"objective": {"task": "tests.tasks_for_tests:regression_held", "options": {"hold": 2.0}}}
    path = write(tmp_path, name, merged(VARIED, held), heartbeat_interval=1, grace_period=30)
    log = tmp_path / "sweep.log"
    parent = start(path, "--workers", "3", "--log-file", str(log), storage=PG_URL)
    try:
        wait_for_reservation(name, PG_URL)
        restart_postgres(down_for=3.0)
        _, err = parent.communicate(timeout=300)
    finally:
        ensure_postgres_running()
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 0, log.read_text()[-6000:]
    assert "Traceback" not in err
    study = assert_books_balance(name, PG_URL, 2000)
    assert ledger_of(name, PG_URL).open == 0
    assert any(TrialRecord.of(t).fused_group for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_bad_url_fails_fast_without_the_password(tmp_path, parent):
    """(In this process: an exception that escaped would fail the test, where a subprocess printed a Traceback.)"""
    path = study_file(tmp_path, "bad", n_trials=1)
    started = time.monotonic()
    done = parent(path, storage="postgresql+psycopg://sweeper:sekret-pw@127.0.0.1:1/nowhere")
    err = done.stderr
    assert done.returncode == 3
    assert time.monotonic() - started < 20
    assert "cannot open storage" in err and "sweeper:***@127.0.0.1:1" in err
    assert "sekret-pw" not in err and "Traceback" not in err
    done = parent(path, storage="notadb://what:sekret-pw@h/db")
    err = done.stderr
    assert done.returncode == 2 and "dialect 'notadb' is not supported" in err  # a usage error, not an outage
    assert "sekret-pw" not in err


def test_four_local_workers_on_sqlite_never_lock(tmp_path, parent):
    path = study_file(tmp_path, "local", n_trials=12)
    done = parent(path, "--workers", "4", storage=f"sqlite:///{tmp_path}/local.db")
    err = done.stderr
    assert done.returncode == 0, err
    assert "locked" not in err
    study = load("local", f"sqlite:///{tmp_path}/local.db")
    assert_exactly(study, 12)
    # The only failed trials allowed: asked in a race for the last slot and closed before they ran.
    # No race at all (none of them) is a correct outcome too, so this list may well be empty.
    surplus = study.get_trials(states=(TrialState.FAIL,))
    ran_and_failed = [(t.number, t.user_attrs.get("error")) for t in surplus
                      if not t.user_attrs.get("error", "").startswith("not started") or t.intermediate_values]
    assert not ran_and_failed


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_for_children(parent: subprocess.Popen, n: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(children := children_of(parent.pid)) >= n:
            return children
        time.sleep(0.2)
    raise AssertionError(f"the parent did not start {n} workers")


def wait_for_registered(pid: int, name: str, storage: str, timeout: float = 180) -> None:
    """Until the worker process `pid` has its worker number in the store (it then asks for a trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            study_id = load(name, storage)._study_id
            with engine(storage).connect() as connection:
                pids = connection.execute(select(WORKERS.c.pid).where(WORKERS.c.study_id == study_id)).scalars()
                if pid in set(pids):
                    return
        except (KeyError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):  # not created yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"worker {pid} never registered")


def lost_worker_run(tmp_path, storage: str, name: str) -> tuple[subprocess.CompletedProcess, optuna.Study, int]:
    """`--workers 2`, one worker SIGKILLed mid-trial; the parent's output, the study, the victim's pid."""
    # a grace period with room for a live worker's heartbeat on a loaded machine: only the victim's goes stale
    # 5 trials: the victim still finds one to ask for however far the other worker got while it started
    path = study_file(tmp_path, name, n_trials=5, seconds=2.0, grace_period=6)
    parent = start(path, "--workers", "2", storage=storage)
    victim = wait_for_children(parent, 2)[1]
    wait_for_registered(victim, name, storage)
    time.sleep(1.0)  # it asks for its first trial as it registers, and trains it for 2 s
    os.kill(victim, signal.SIGKILL)
    out, err = parent.communicate(timeout=300)
    return subprocess.CompletedProcess(parent.args, parent.returncode, out, err), load(name, storage), victim


def assert_lost_worker_reported(done: subprocess.CompletedProcess, study: optuna.Study, victim: int) -> None:
    assert done.returncode == 0, done.stderr  # the study holds the trials asked for
    assert_exactly(study, 5)
    assert "5 trials finished; best val_mse" in done.stdout  # the summary, as without the loss
    lines = [line for line in done.stderr.splitlines() if f"(pid {victim})" in line]
    assert lines and all(re.search(rf"worker [12] of 2 \(pid {victim}\) was killed by SIGKILL", line)
                         for line in lines), done.stderr
    requeued = sorted(t.number for t in study.get_trials(states=(TrialState.FAIL,))
                      if any(r.system_attrs.get("retry_history", [None])[-1] == t.number for r in study.trials))
    held = ", ".join(map(str, requeued))
    assert requeued and f"queued again: trial{'s' if len(requeued) > 1 else ''} {held} " in lines[-1], done.stderr


@needs_pg
def test_a_killed_worker_of_workers_n_ends_with_the_summary_and_exit_0(tmp_path):
    """A worker child SIGKILLed: the others retry its trials, and the parent names the lost worker
    and its requeued trials, then ends as usual (summary, exit code from what the study holds)."""
    assert_lost_worker_reported(*lost_worker_run(tmp_path, PG_URL, unique("lost")))


def test_a_killed_worker_of_workers_n_on_sqlite(tmp_path):
    assert_lost_worker_reported(*lost_worker_run(tmp_path, f"sqlite:///{tmp_path}/lost.db", "lost"))


@needs_pg
def test_a_worker_that_raises_is_named_and_the_study_still_ends(tmp_path, parent):
    """The second trial built raises KeyboardInterrupt in its worker, which closes its trials, queues
    them again and exits 130; the other workers finish the study, and the parent ends with exit 0."""
    name = unique("raises")
    path = study_file(tmp_path, name, n_trials=4, seconds=1.0)
    data = yaml.safe_load(path.read_text())
    data["objective"] = {"task": "tests.tasks_for_tests:scripted",
                         "options": {"counter": str(tmp_path / "builds"), "interrupt": 2}}
    path.write_text(yaml.safe_dump(data))
    done = parent(path, "--workers", "2", storage=PG_URL)
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, err
    assert_exactly(load(name, PG_URL), 4)
    assert "4 trials finished; best val_mse" in out
    assert re.search(r"warning: worker [12] of 2 \(pid \d+\) exited with code 130; its trials were queued again: "
                     r"trials? [\d, ]+ \(run again as [\d, ]+\)", err), err
