"""storage/: one URL in, one configured Optuna storage out; on SQLite and on the real PostgreSQL.

The PostgreSQL URL comes from SWEEPS_TEST_POSTGRES_URL (set by .ci/run); without it those tests skip.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import threading
import time
import uuid

import optuna
import pytest
import sqlalchemy
from optuna.exceptions import StorageInternalError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from storage import StorageError, StorageUsageError, open_storage, redact, resolve_url
from storage.retry import is_connection_error, with_retry
from sweeps.config.target import target_of
from sweeps.loop.runner import run_sweep
from tests.conftest import PG_URL, needs_pg
from tests.storage_child import open_in_child


def test_redact_hides_the_password_and_nothing_else():
    url = "postgresql+psycopg://sweeper:s3cret@db.example:5432/sweeps"
    assert redact(url) == "postgresql+psycopg://sweeper:***@db.example:5432/sweeps"
    assert redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert "s3cret" not in redact("::not a url s3cret")


def test_resolve_url_order_and_sqlite_paths(tmp_path, monkeypatch):
    """--storage, then $SWEEPS_STORAGE, then study.storage, then <name>.db beside the file."""
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    base = tmp_path.resolve()
    assert resolve_url(None, None, tmp_path, "s") == f"sqlite:///{base}/s.db"
    assert resolve_url(None, "sqlite:///f.db", tmp_path, "s") == f"sqlite:///{base}/f.db"
    (tmp_path / "sub").mkdir()
    assert resolve_url("sqlite:///sub/x.db", "sqlite:///f.db", tmp_path, "s") == f"sqlite:///{base}/sub/x.db"
    monkeypatch.setenv("SWEEPS_STORAGE", "postgresql+psycopg://u:pw@h/db")
    assert resolve_url(None, "sqlite:///f.db", tmp_path, "s") == "postgresql+psycopg://u:pw@h/db"  # env > file
    assert resolve_url("sqlite:///y.db", "sqlite:///f.db", tmp_path, "s").endswith("/y.db")  # flag > env
    with pytest.raises(StorageError, match="in-memory"):
        resolve_url("sqlite:///:memory:", None, tmp_path, "s")
    with pytest.raises(StorageError, match="does not exist"):
        resolve_url("sqlite:///nowhere/x.db", None, tmp_path, "s")


@pytest.mark.parametrize("level", ["--storage", "$SWEEPS_STORAGE", "study.storage"])
@pytest.mark.parametrize(("value", "says"), [
    ("digits.db", "'sqlite:///digits.db'"),
    ("mongodb://h/db", "dialect 'mongodb' is not supported"),
    ("postgresql+psycopg2://u@h/db", "pip install 'psycopg2-binary'"),
    ("postgresql+nodriver://u@h/db", "unknown driver"),
])
def test_a_bad_storage_value_is_a_usage_error_naming_where_it_came_from(tmp_path, monkeypatch, level, value, says):
    if value.startswith("postgresql+psycopg2"):
        try:
            import psycopg2  # noqa: F401
            pytest.skip("psycopg2 is installed here")
        except ImportError:
            pass
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    flag = value if level == "--storage" else None
    from_file = value if level == "study.storage" else "sqlite:///ignored.db"
    if level == "$SWEEPS_STORAGE":
        monkeypatch.setenv("SWEEPS_STORAGE", value)
    with pytest.raises(StorageUsageError) as raised:
        resolve_url(flag, None if level == "--storage" else from_file, tmp_path, "s")
    assert str(raised.value).startswith(f"{level}: ") and says in str(raised.value)


def test_sqlite_gets_wal_and_a_busy_timeout(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


def test_heartbeat_settings_and_the_retry_callback(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/h.db", heartbeat_interval=2, grace_period=7, max_retry=4)
    assert storage.get_heartbeat_interval() == 2 and storage.grace_period == 7
    callback = storage.get_heartbeat_stale_trial_callback()
    assert isinstance(callback, optuna.storages.RetryHeartbeatStaleTrialCallback)
    assert callback._max_retry == 4
    assert open_storage(f"sqlite:///{tmp_path}/h.db").get_heartbeat_interval() is None


@needs_pg
def test_postgres_store_replaces_dropped_connections_and_bounds_its_pool(fresh_schema):
    """On the real server: connections the server dropped (a restart, an idle timeout) are
    replaced without an error (pre-ping), and one process never holds more than a few connections
    however many threads use its store (a bounded pool: many workers must fit max_connections)."""
    _, url = fresh_schema
    app = f"sweeps_pool_{uuid.uuid4().hex[:8]}"
    url = make_url(url).update_query_dict({"application_name": app}).render_as_string(hide_password=False)
    storage = open_storage(url)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "pool")
    admin = sqlalchemy.create_engine(PG_URL, poolclass=sqlalchemy.pool.NullPool)

    def server_side(sql: str) -> list:
        with admin.connect() as conn:
            return conn.exec_driver_sql(sql, (app,)).scalars().all()

    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    try:
        killed = server_side("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s")
        assert killed and all(killed), "the store keeps a pooled connection to drop"
        assert storage.get_study_name_from_id(study_id) == "pool"  # no OperationalError from a dead connection

        peak, stop = [0], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], server_side(count)[0])
                time.sleep(0.01)

        def use_store() -> None:
            for _ in range(20):
                storage.get_all_studies()

        sampler = threading.Thread(target=sample)
        sampler.start()
        users = [threading.Thread(target=use_store) for _ in range(16)]
        for thread in users:
            thread.start()
        for thread in users:
            thread.join(timeout=120)
        stop.set()
        sampler.join()
        assert 1 <= peak[0] <= 4, f"{peak[0]} connections for one process's 16 threads"
    finally:
        storage.engine.dispose()
        admin.dispose()


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_quick_error_without_the_password():
    url = f"postgresql+psycopg://sweeper:pw-xyz@127.0.0.1:{refused_port()}/db"
    started = time.monotonic()
    with pytest.raises(StorageError) as err:
        open_storage(url)
    # a refused connection fails in milliseconds; 30 s is generous for a loaded machine and still
    # tells a quick error from with_retry's 120 s of retries
    assert time.monotonic() - started < 30
    assert "sweeper:***@127.0.0.1" in str(err.value) and "pw-xyz" not in str(err.value)


def test_a_server_that_never_answers_times_out_within_seconds():
    """A listening socket that never speaks (a firewall, a hung server): no hang past the timeout."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted = []
    stop = threading.Event()

    def accept_and_stay_silent():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(StorageError, match="cannot open storage"):
            open_storage(f"postgresql+psycopg://u:pw-silent@127.0.0.1:{silent.getsockname()[1]}/db")
        # the connect timeout is CONNECT_TIMEOUT_S = 5 s: 30 s is generous for a loaded machine and
        # still tells it from a hang or from with_retry's 120 s of retries
        assert time.monotonic() - started < 30, "an error within seconds, not a hang"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        silent.close()


def lost_connection() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def test_with_retry_rides_out_lost_connections_only():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise lost_connection()
        return "ok"

    assert with_retry(flaky, "test") == "ok" and len(calls) == 3
    assert calls[2] - calls[1] >= calls[1] - calls[0] >= 0.4  # backoff: 0.5 s, then 1 s

    def broken():
        calls.append(1)
        raise ValueError("not a connection problem")

    calls.clear()
    with pytest.raises(ValueError):
        with_retry(broken, "test")
    assert len(calls) == 1

    wrapped = StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = lost_connection()
    assert is_connection_error(wrapped) and not is_connection_error(StorageInternalError("other"))

    started = time.monotonic()
    with pytest.raises(OperationalError):
        with_retry(lambda: (_ for _ in ()).throw(lost_connection()), "test", give_up_after=1.0)
    assert time.monotonic() - started < 30  # gives up after about 1 s, not the default 120 s (generous)


@needs_pg
def test_a_query_after_a_lost_connection_in_the_same_transaction_reads_as_a_lost_connection():
    """Optuna answers a failed read by trying a slower one in the same session; after a lost connection
    that second query raises SQLAlchemy's PendingRollbackError ("Can't reconnect until invalid
    transaction is rolled back"), wrapped in a StorageInternalError. It is the same outage: retried
    as one (with backoff, up to the deadline), not as another error tried three times. (A pooler's
    restart ended a --workers parent on it.)"""
    engine = sqlalchemy.create_engine(PG_URL)
    admin = sqlalchemy.create_engine(PG_URL, poolclass=sqlalchemy.pool.NullPool)
    try:
        with sqlalchemy.orm.Session(engine) as session:
            pid = session.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar_one()
            with admin.connect() as other:
                other.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(OperationalError) as lost:
                session.execute(sqlalchemy.text("SELECT 1"))
            with pytest.raises(sqlalchemy.exc.PendingRollbackError) as after:
                session.execute(sqlalchemy.text("SELECT 1"))
        wrapped = StorageInternalError("An exception is raised during the commit.")
        wrapped.__cause__ = after.value
        assert is_connection_error(lost.value) and is_connection_error(after.value) and is_connection_error(wrapped)
    finally:
        engine.dispose()
        admin.dispose()


def test_with_retry_tries_another_database_error_three_times_and_names_its_cause(caplog):
    """Around a server restart not every aborted transaction reads as a lost connection (a compose run
    failed a trial on a bare StorageInternalError): such an error is tried three times in all, each
    retry logged with its cause, then raised; one that passes on a retry is not seen."""
    calls = []

    def aborted(times: int):
        def operation():
            calls.append(1)
            if len(calls) <= times:
                err = StorageInternalError("An exception is raised during the commit.")
                err.__cause__ = sqlalchemy.exc.InternalError("COMMIT", {}, Exception("transaction is aborted"))
                raise err
            return "ok"
        return operation

    with caplog.at_level("WARNING", logger="sweeps"), pytest.raises(StorageInternalError):
        with_retry(aborted(5), "test")
    assert len(calls) == 3
    assert "database error during test" in caplog.text and "caused by InternalError" in caplog.text
    calls.clear()
    assert with_retry(aborted(1), "test") == "ok" and len(calls) == 2


@pytest.fixture
def fresh_schema():
    """A PostgreSQL schema of its own (dropped afterwards) and a URL whose tables live there."""
    schema = f"sweeps_test_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield schema, url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@needs_pg
def test_workers_starting_together_create_the_tables_once(fresh_schema):
    schema, url = fresh_schema
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=open_in_child, args=(url, barrier)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 6
    engine = sqlalchemy.create_engine(PG_URL)
    with engine.connect() as conn:
        tables = conn.exec_driver_sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)).scalars().all()
        versions = conn.exec_driver_sql(f"SELECT count(*) FROM {schema}.version_info").scalar()
    engine.dispose()
    assert {"studies", "trials", "trial_heartbeats"} <= set(tables) and versions == 1


@needs_pg
def test_the_password_is_stored_nowhere(tiny_config, fresh_schema):
    """Trust authentication ignores the password, so a URL with one reaches the real server."""
    _, url = fresh_schema
    secret_url = make_url(url).set(password="pw-never-stored").render_as_string(hide_password=False)
    config = tiny_config(study={"storage": secret_url, "n_trials": 2})
    study = run_sweep(config, target_of(config), show_progress=False)
    stored = json.dumps([study.user_attrs]
                        + [[t.user_attrs, t.system_attrs, t.params] for t in study.trials], default=str)
    assert "pw-never-stored" not in stored
    assert "***" in study.user_attrs["config"]["study"]["storage"]
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:  # nor anywhere else in the study's tables
        for table in ("study_user_attributes", "study_system_attributes", "trial_user_attributes",
                      "trial_system_attributes"):
            values = conn.exec_driver_sql(f"SELECT value_json FROM {table}").scalars().all()
            assert not any("pw-never-stored" in v for v in values), table
    engine.dispose()
