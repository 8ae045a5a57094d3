"""Many workers through PgBouncer in transaction mode (`?pooler=pgbouncer`, docs/many_workers.md), with
every guarantee of the direct path: exact totals, a killed worker's trial queued again, distinct worker
numbers, `study.total_budget` held, nothing lost when the pooler restarts; and PostgreSQL holds no more
server connections than the pool. A store that cannot hold the ledger refuses `study.total_budget`.

PgBouncer is Debian's package (tests/pgbouncer_install.sh; .ci/run installs it): without it these
tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy.pool import NullPool

from storage import ledger
from storage.sql import StorageUsageError, check_url, driver_url, engine_kwargs, pooler_of
from storage.workers import WORKERS
from sweeps.config.study_file import parse_config
from sweeps.errors import ConfigError, exit_for
from sweeps.exits import USAGE
from tests import pgbouncer
from tests.conftest import engine, postgres_held
from tests.test_workers import (
    PG_URL,
    assert_exactly,
    delete_pg_studies,  # noqa: F401 - the autouse fixture deletes this module's studies too
    load,
    start,
    study_file,
    unique,
    wait_for_children,
    wait_for_registered,
    wait_for_running,
)

POOL = 10


def needs_pgbouncer() -> None:
    if not PG_URL:
        pytest.skip("set SWEEPS_TEST_POSTGRES_URL to run PostgreSQL tests")
    if not pgbouncer.installed():
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("pgbouncer is missing on CI: .ci/run installs Debian's pgbouncer package")
        pytest.skip("no pgbouncer here (Debian: apt-get install pgbouncer)")


@pytest.fixture
def pooler():
    """PgBouncer in front of the local server; a test through it cannot ride out a restart of that
    server by another test (PgBouncer refuses logins for its retry window): `postgres_held`."""
    needs_pgbouncer()
    with postgres_held(exclusive=False):
        bouncer = pgbouncer.PgBouncer(PG_URL, pool_size=POOL)
        bouncer.start()
        try:
            yield bouncer
        finally:
            bouncer.close()


def finish_after(parent, act) -> tuple[str, str]:
    """`act()` while the `--workers` parent runs, then its stdout and stderr once it ends (killed if the
    test fails before)."""
    try:
        act()
        return parent.communicate(timeout=600)
    finally:
        if parent.poll() is None:
            parent.kill()


class PeakConnections:
    """The most server connections PostgreSQL held for the pooler while the block ran (sampled every
    0.2 s on one direct connection of its own)."""

    def __init__(self, application_name: str):
        self.application_name, self.peak, self.stop = application_name, 0, threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        with engine(PG_URL).connect() as connection:
            while not self.stop.wait(0.2):
                self.peak = max(self.peak, pgbouncer.server_connections(connection, self.application_name))
                connection.rollback()

    def __enter__(self) -> PeakConnections:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def worker_numbers(name: str) -> list[tuple[int, int]]:
    study_id = load(name, PG_URL)._study_id
    with engine(PG_URL).connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(WORKERS.c.number, WORKERS.c.pid).where(WORKERS.c.study_id == study_id))]


def wait_until_every_worker_trains(name: str, timeout: float) -> None:
    """Until each registered worker holds an open reservation: a trial booked when it starts
    training, one per worker at a time (a trial asked ahead books nothing), so a worker registered
    by then is mid-trial, however loaded the machine."""
    study_id = load(name, PG_URL)._study_id
    eng = sqlalchemy.create_engine(PG_URL, poolclass=NullPool)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with eng.connect() as connection:
                registered = len(connection.execute(select(WORKERS.c.pid).where(WORKERS.c.study_id == study_id)).all())
            if len(ledger.open_trials(eng, study_id)) >= registered:
                return
            time.sleep(0.05)
    finally:
        eng.dispose()
    raise AssertionError("the workers never all trained at once")


def ledger_of(name: str) -> ledger.LedgerState | None:
    eng = sqlalchemy.create_engine(PG_URL, poolclass=NullPool)
    try:
        return ledger.read(eng, load(name, PG_URL)._study_id)
    finally:
        eng.dispose()


def test_the_pooler_option_is_the_services_not_the_drivers():
    url = "postgresql+psycopg://u:secret@db:6432/sweeps?pooler=pgbouncer&application_name=w"
    assert pooler_of(url) == "pgbouncer" and pooler_of("postgresql+psycopg://u@db/sweeps") is None
    assert driver_url(url) == "postgresql+psycopg://u:secret@db:6432/sweeps?application_name=w"
    assert engine_kwargs(url)["connect_args"]["prepare_threshold"] is None  # no server-side prepared statements
    assert "prepare_threshold" not in engine_kwargs("postgresql+psycopg://u@db/sweeps")["connect_args"]
    check_url(url, "--storage")
    for bad in ("postgresql+psycopg://u@db/sweeps?pooler=odyssey", "sqlite:///x.db?pooler=pgbouncer"):
        with pytest.raises(StorageUsageError, match="pooler=pgbouncer"):
            check_url(bad, "--storage")


def test_total_budget_on_a_store_without_the_ledger_is_refused_with_exit_2():
    """A store with no SQL engine (Optuna's in-memory store here; its gRPC proxy client is another)
    cannot hold the ledger: the sweep refuses its total instead of running without it."""
    from sweeps.loop.runner import open_ledger

    config = parse_config({
        "study": {"name": "no-ledger", "metric": "val_mse", "direction": "minimize", "n_trials": 4,
                  "total_budget": {"amount": 100, "unit": "updates"}},
        "objective": {"task": "regression"},
        "budget": {"unit": "updates", "per_trial": 10},
        "search": {"batch_size": [8, 16], "base_lr": {"low": 1e-3, "high": 0.1, "log": True}},
    })
    study = optuna.create_study(study_name="no-ledger", storage=optuna.storages.InMemoryStorage())
    with pytest.raises(ConfigError) as refused:
        open_ledger(study, config)
    code, line = exit_for(refused.value, "study.yaml")
    assert code == USAGE == 2
    assert line.startswith("study.yaml: study.total_budget: ") and "\n" not in line
    assert "?pooler=pgbouncer" in line and "remove study.total_budget" in line


def test_eight_workers_through_pgbouncer_one_killed(tmp_path, pooler):
    """8 workers through the pooler, one SIGKILLed mid-trial: exact totals, its trial queued again and
    re-run, distinct worker numbers, the ledger never over its total, and PostgreSQL holding no more
    server connections than the pool."""
    name = unique("pooled-kill")
    # 20 trials of 2 s; the ledger's total holds them and the killed trial's reservation with room to
    # spare, so it binds only if reservations were not atomic
    path = study_file(tmp_path, name, n_trials=20, seconds=2.0, grace_period=8,
                      total_budget={"amount": 60, "unit": "seconds"})
    with PeakConnections(pooler.application_name) as connections:
        parent = start(path, "--workers", "8", storage=pooler.url)
        victim = None

        def kill_one() -> None:
            nonlocal victim
            victim = wait_for_children(parent, 8, timeout=120)[5]
            wait_for_registered(victim, name, PG_URL, timeout=300)
            wait_until_every_worker_trains(name, timeout=300)  # the victim too: it dies mid-trial
            os.kill(victim, signal.SIGKILL)

        out, err = finish_after(parent, kill_one)
    assert parent.returncode == 0, err[-3000:]
    study = load(name, PG_URL)
    assert_exactly(study, 20)
    # a trial asked ahead in the race for the last slots and closed unstarted is FAIL 'not started',
    # never retried (as in tests/test_workers.py); every other failed trial is the victim's, retried
    failed = [t for t in study.get_trials(states=(TrialState.FAIL,))
              if not t.user_attrs.get("error", "").startswith("not started") or t.intermediate_values]
    assert failed, "the killed worker's trial was not failed"
    for dead in failed:
        retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, (
            dead.number, dead.user_attrs.get("error"), [(t.number, t.state.name) for t in retries])
    assert f"(pid {victim}) was killed by SIGKILL" in err, err[-3000:]
    numbers = worker_numbers(name)
    assert len(numbers) == 8 and sorted(n for n, _ in numbers) == list(range(8)), numbers
    assert len({pid for _, pid in numbers}) == 8
    state = ledger_of(name)
    assert state is not None and state.amount == 60
    assert state.spent <= state.amount * (1 + ledger.SLACK), state
    assert 0 < connections.peak <= POOL, connections.peak


def test_total_budget_binds_exactly_through_pgbouncer(tmp_path, pooler):
    """8 workers race for a total that holds 5 trials: the reservations, atomic through the pooler,
    start no more than 5, and the ledger never spends more than the total."""
    name = unique("pooled-total")
    # 30 updates a trial, planned and spent exactly (a seconds budget may overrun its reservation)
    path = study_file(tmp_path, name, n_trials=30, total_budget={"amount": 150, "unit": "updates"})
    parent = start(path, "--workers", "8", storage=pooler.url)
    out, err = parent.communicate(timeout=600)
    assert parent.returncode == 0, err[-3000:]
    state = ledger_of(name)
    assert state is not None and state.spent <= state.amount * (1 + ledger.SLACK), state
    assert 1 <= len(load(name, PG_URL).get_trials(states=(TrialState.COMPLETE,))) <= 5


def test_a_pgbouncer_restart_mid_sweep_loses_no_trial(tmp_path, pooler):
    """PgBouncer stops (its clients lose their connections) and starts again 3 s later, mid-sweep: the
    workers' storage calls retry, the parent's progress lines skip the outage and catch up after it,
    and the study ends exact with every finished trial's record whole; then a resume through it goes
    on to a larger total."""
    name = unique("pooled-restart")
    path = study_file(tmp_path, name, n_trials=8, seconds=1.0, heartbeat_interval=1, grace_period=30)
    parent = start(path, "--workers", "4", storage=pooler.url, quiet=False)  # the parent reads the store each second

    def restart_the_pooler() -> None:
        wait_for_running(name, PG_URL, timeout=300)
        time.sleep(1.5)
        pooler.restart(down_for=3.0)

    out, err = finish_after(parent, restart_the_pooler)
    assert parent.returncode == 0, own_lines(err)
    study = load(name, PG_URL)
    assert_exactly(study, 8)
    finished = {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert {n for n in finished if f"trial {n} complete:" not in err} == set(), own_lines(err)
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        assert trial.user_attrs["stop_reason"] in {"budget", "epochs", "early_stopping"}
        assert trial.intermediate_values
    # and a resume through the pooler takes the study on to a larger total, exact again
    more = start(path, "--workers", "2", "--set", "study.n_trials=10", storage=pooler.url)
    _, err = more.communicate(timeout=600)
    assert more.returncode == 0, err[-3000:]
    assert_exactly(load(name, PG_URL), 10)


def own_lines(err: str) -> str:
    """A parent's stderr less the lines each worker prints while the store is out of reach (which
    would fill an assertion's message and hide why the parent failed)."""
    retried = ("heartbeat for trial", "storage unreachable during", "could not keep the checkpoint")
    return "\n".join(line for line in err.splitlines() if not line.startswith(retried))[-3000:]


def test_workers_registering_at_once_through_pgbouncer_get_distinct_numbers(pooler):
    """Registrations through the pooler, from several processes' worth of connections at once: the numbers
    0..n-1, each once (the study's row is locked for the registration's transaction only)."""
    from storage.optuna_private import study_id_of
    from storage.sql import open_storage
    from tests.test_worker_seeds import register_concurrently

    name = unique("pooled-register")
    study_id = study_id_of(optuna.create_study(storage=open_storage(pooler.url), study_name=name))
    numbers = register_concurrently(pooler.url, study_id, 12) + register_concurrently(pooler.url, study_id, 12)
    assert sorted(numbers) == list(range(24))


def test_a_worker_that_registers_while_the_store_is_away_waits_for_it(pooler):
    """A worker that starts while the database is out of reach (here its pooler, stopped for 6 s)
    waits at its registration and takes its number once the store is back, as every storage call
    waits out a restart; it used to give up after 50 quick tries (about 3 s) with a traceback. A
    database error nothing waited out is one line and exit 3, never a traceback."""
    from sqlalchemy.exc import OperationalError

    from storage.optuna_private import study_id_of
    from storage.sql import open_storage
    from storage.workers import register_worker
    from sweeps.exits import STORAGE

    name = unique("pooled-register-away")
    storage = open_storage(pooler.url)
    study_id = study_id_of(optuna.create_study(storage=storage, study_name=name))
    storage.engine.dispose()  # no pooled connection survives the stop: the registration connects anew
    pooler.stop()
    taken: list = []
    registering = threading.Thread(target=lambda: taken.append(_outcome(lambda: register_worker(storage, study_id))))
    registering.start()
    try:
        time.sleep(6.0)
        assert registering.is_alive(), f"the registration ended while the store was away: {taken}"
    finally:
        pooler.start()
    registering.join(timeout=60)
    assert taken == [0]

    pooler.stop()  # and what nothing waits out: one line with the fix to try, exit 3
    with pytest.raises(OperationalError) as failed:
        sqlalchemy.create_engine(driver_url(pooler.url), poolclass=NullPool).connect()
    code, line = exit_for(failed.value, "study.yaml")
    assert code == STORAGE and "\n" not in line
    assert line.startswith("the store failed: OperationalError: ") and "run the same command again" in line


def _outcome(call):
    try:
        return call()
    except Exception as err:  # noqa: BLE001 - the test reports what ended the registration
        return err
