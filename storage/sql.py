"""SQL storage set-up: URL resolution, SQLite pragmas, and URLs safe to print.

SQLite is the no-set-up default; WAL mode and a busy timeout let a few local processes share a
file without "database is locked". Passwords never leave this module in clear text.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import optuna
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from storage.optuna_private import cache_migration_scripts, check_schema_one_connection_at_a_time

ENV_VAR = "SWEEPS_STORAGE"
SQLITE_BUSY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 5  # an unreachable server is an error within seconds, not a hang
# A PostgreSQL URL that goes through a pooler says so in its query: `?pooler=pgbouncer`
# (docs/many_workers.md). The option is the service's, never the driver's: it is taken off the URL
# before the engine is made. PgBouncer in transaction mode hands each transaction any server
# connection, so nothing may outlive a transaction on the server: the service keeps none (its ledger
# locks a row FOR UPDATE inside the reservation's transaction, its registry and Optuna's heartbeats
# are single transactions; no advisory lock, LISTEN, session SET or temporary table), and psycopg's
# automatic server-side prepared statements, which live on one server connection, are turned off.
POOLER_OPTION = "pooler"
POOLERS = ("pgbouncer",)


class StorageError(RuntimeError):
    """The store cannot be opened or used; the message names the URL without its password."""


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable storage URL>"


class StorageUsageError(StorageError):
    """The storage value itself is wrong (not a URL, an unsupported dialect, a missing driver):
    a usage error, told apart from a store that cannot be reached."""


SUPPORTED_BACKENDS = ("sqlite", "postgresql")
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "asyncpg": "asyncpg",
                   "pg8000": "pg8000"}


def choose_url(flag: str | None, from_file: str | None, study_name: str) -> tuple[str, str]:
    """The storage value that wins, and where it came from, in the one documented order:
    the --storage flag, then $SWEEPS_STORAGE, then the study file's study.storage, then
    `<study name>.db` beside the study file."""
    for value, source in ((flag, "--storage"), (os.environ.get(ENV_VAR), f"${ENV_VAR}"),
                          (from_file, "study.storage")):
        if value is not None and value.strip():
            return value.strip(), source
    return f"sqlite:///{study_name}.db", "the default"


def check_url(url: str, source: str) -> None:
    """A usage error (StorageUsageError) unless `url` names a supported dialect whose driver is
    installed; nothing is opened."""
    try:
        parsed = make_url(url) if "://" in url else None
    except (ArgumentError, ValueError):
        parsed = None
    if parsed is None:
        name = url.split("/")[-1] or "sweeps.db"
        raise StorageUsageError(f"{source}: {url!r} is not a storage URL; for a SQLite file write "
                                f"'sqlite:///{name}' (or postgresql+psycopg://USER@HOST:5432/DB)")
    backend = parsed.get_backend_name()
    pooler = parsed.query.get(POOLER_OPTION)
    if pooler is not None and (backend != "postgresql" or pooler not in POOLERS):
        raise StorageUsageError(f"{source}: {POOLER_OPTION}={pooler} in {redact(url)} is not supported: "
                                f"write ?{POOLER_OPTION}=pgbouncer, on a postgresql+psycopg:// URL only")
    if backend not in SUPPORTED_BACKENDS:
        raise StorageUsageError(f"{source}: storage dialect {backend!r} is not supported ({redact(url)}): use "
                                "sqlite:///FILE.db or postgresql+psycopg://USER@HOST:5432/DB")
    try:
        parsed.get_dialect().import_dbapi()
    except ImportError as err:
        driver = parsed.get_driver_name()
        package = DRIVER_PACKAGES.get(driver, driver)
        raise StorageUsageError(f"{source}: the driver {driver!r} of {redact(url)} is not installed: "
                                f"pip install '{package}' (or use postgresql+psycopg://)") from err
    except (ArgumentError, ValueError, AttributeError) as err:  # an unknown driver name
        raise StorageUsageError(f"{source}: unknown driver in {redact(url)}: {err}; "
                                "use postgresql+psycopg://") from err


def resolve_url(flag: str | None, from_file: str | None, base_dir: str | Path, study_name: str) -> str:
    """The URL to use (see `choose_url` for the order), checked by `check_url`.

    A relative SQLite path resolves against `base_dir` (the study file's folder), so the same
    study file finds the same database from any working directory.
    """
    url, source = choose_url(flag, from_file, study_name)
    check_url(url, source)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return url
    database = parsed.database
    if not database or database == ":memory:":
        raise StorageUsageError(f"{source}: an in-memory SQLite store would lose every trial: give a file path")
    path = Path(database).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.parent.is_dir():
        raise StorageError(f"folder {path.parent} for the SQLite store does not exist")
    return parsed.set(database=str(path.resolve())).render_as_string(hide_password=False)


def sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.close()


def pooler_of(url: str) -> str | None:
    """The pooler a URL goes through (`?pooler=pgbouncer`), or None for a direct connection."""
    try:
        return make_url(url).query.get(POOLER_OPTION)
    except (ArgumentError, ValueError):
        return None


def driver_url(url: str) -> str:
    """`url` as the driver gets it: without the service's own `pooler` option."""
    parsed = make_url(url)
    if POOLER_OPTION not in parsed.query:
        return url
    return parsed.difference_update_query([POOLER_OPTION]).render_as_string(hide_password=False)


# Each process holds at most POOL_SIZE + MAX_OVERFLOW connections of its engine (a worker of --workers
# is two processes, its sweep loop and its bookkeeper: docs/many_workers.md counts them).
POOL_SIZE = 2
MAX_OVERFLOW = 2


def engine_kwargs(url: str) -> dict:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if backend == "postgresql":
        connect_args: dict = {"connect_timeout": CONNECT_TIMEOUT_S}
        if pooler_of(url) is not None:
            # psycopg 3 prepares a statement on the server after its 5th run on a connection; in
            # transaction pooling the next run may land on a server connection without it
            connect_args["prepare_threshold"] = None
        return {
            "pool_pre_ping": True,
            "pool_size": POOL_SIZE,
            "max_overflow": MAX_OVERFLOW,
            "connect_args": connect_args,
        }
    return {"pool_pre_ping": True}


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int | None = 3) -> optuna.storages.RDBStorage:
    """An RDBStorage for `url`; errors become a StorageError naming the redacted URL.

    With a heartbeat, a trial whose worker died (SIGKILL, a lost machine) is failed once its
    heartbeat is `grace_period` seconds old and queued again, up to `max_retry` times.
    """
    install_process_hooks()
    safe = redact(url)
    kwargs: dict = {"engine_kwargs": engine_kwargs(url)}
    with warnings.catch_warnings():  # the heartbeat API is marked experimental since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_interval:
            kwargs.update(
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period or 2 * heartbeat_interval,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry),
            )
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if pooler_of(url) is None:
                    return optuna.storages.RDBStorage(driver_url(url), **kwargs)
                # through a pooler, Optuna's own schema check would hold a connection while it opens another
                storage = optuna.storages.RDBStorage(driver_url(url), skip_compatibility_check=True, **kwargs)
                check_schema_one_connection_at_a_time(storage)
                return storage
        except (IntegrityError, ProgrammingError, OperationalError) as err:
            if isinstance(err, OperationalError) and "already exists" not in str(err):
                raise StorageError(f"cannot open storage {safe}: {first_line(err, url, safe)}") from err
            if attempt == 2:  # workers starting together can race to create the tables
                raise StorageError(f"cannot create the tables in {safe}: {first_line(err, url, safe)}") from err
            time.sleep(0.5 + attempt)
        except (SQLAlchemyError, ImportError, ValueError, OSError) as err:
            raise StorageError(f"cannot open storage {safe}: {first_line(err, url, safe)}") from err
    raise AssertionError("unreachable")


def open_read_only(url: str) -> optuna.storages.RDBStorage:
    """An RDBStorage that only reads: no table is created, no schema check, no pragma, and a SQLite
    file opened read-only (a missing file is a StorageError, never a new empty store) that leaves no
    -wal or -shm file behind."""
    safe = redact(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not path.is_file():
            raise StorageError(f"no store at {path}")
        # A WAL file is there while another connection has the store open: read alongside it. Without
        # one nobody is writing, and `immutable` reads the file as it is, creating no -wal or -shm file.
        live = Path(f"{path}-wal").exists()
        url = f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro{'' if live else '&immutable=1'}&uri=true"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(driver_url(url), engine_kwargs=engine_kwargs(url),
                                              skip_compatibility_check=True,
                                              skip_table_creation=True)
    except (SQLAlchemyError, ImportError, ValueError, OSError, optuna.exceptions.OptunaError) as err:
        cause = err.__cause__ if isinstance(err, optuna.exceptions.OptunaError) and err.__cause__ else err
        raise StorageError(f"cannot read storage {safe}: {first_line(cause, url, safe)}") from err


def first_line(err: BaseException, url: str, safe: str) -> str:
    reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
    return reason.replace(url, safe)


def _sqlite_only(dbapi_connection, record) -> None:
    """Pragmas on every SQLite connection, the first one (which creates the tables) included."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        sqlite_pragmas(dbapi_connection, record)


_install_lock = threading.Lock()


def install_sqlite_pragmas() -> None:
    """Listen for new DBAPI connections of every SQLAlchemy engine, and give SQLite's the pragmas
    (idempotent; `open_storage` calls it first).

    RDBStorage creates its engine and at once connects with it to create the tables, inside its
    constructor, so a listener on that engine would come too late for the very first connection. A
    `creator` passed in engine_kwargs would bypass the SQLite dialect's own connect arguments. So
    the listener is on the Engine class (SQLAlchemy files it under every connection pool), filtered
    to sqlite3 connections, installed once, before the first store is opened, and never removed:
    from then on every SQLite engine of the process gets the pragmas, as when it was installed at
    import."""
    with _install_lock:
        if not event.contains(sqlalchemy.engine.Engine, "connect", _sqlite_only):
            event.listen(sqlalchemy.engine.Engine, "connect", _sqlite_only)


def install_process_hooks() -> None:
    """What `open_storage` installs in the process once, before its first store: the SQLite pragmas
    (`install_sqlite_pragmas`) and one read of Optuna's migration scripts per store
    (`storage.optuna_private.cache_migration_scripts`). Idempotent. Code that opens an Optuna store
    by URL without `open_storage` (benchmarks' plain Optuna) calls it for the same settings."""
    install_sqlite_pragmas()
    cache_migration_scripts()
