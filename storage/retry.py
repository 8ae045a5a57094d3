"""Retry a storage operation with backoff while the database is unreachable (a server restart), and a
database error of another kind a few times (around a restart the server aborts transactions in ways
that are not all reported as a lost connection; every operation retried here is safe to repeat)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import DBAPIError, OperationalError, PendingRollbackError, SQLAlchemyError

T = TypeVar("T")
logger = logging.getLogger("sweeps")


def is_connection_error(err: BaseException) -> bool:
    if isinstance(err, OperationalError):
        return True
    if isinstance(err, DBAPIError) and err.connection_invalidated:
        return True
    if isinstance(err, PendingRollbackError) and "reconnect" in str(err):
        return True  # a query after a lost connection in the same transaction (Optuna's fallback after an error)
    cause = err.__cause__
    return isinstance(err, StorageInternalError) and cause is not None and is_connection_error(cause)


def is_store_error(err: BaseException) -> bool:
    """A lost connection, or another database error: what a look that can wait for its next turn
    (a parent's poll of its workers' trials) skips instead of failing on."""
    return isinstance(err, (StorageInternalError, SQLAlchemyError))  # a lost connection is one of these


OTHER_STORE_ERRORS_RETRIED = 2  # a database error that is not a lost connection: tried three times in all


def first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"


def with_cause(err: BaseException) -> str:
    """The error's first line, and its cause's (Optuna's StorageInternalError names only itself)."""
    cause = err.__cause__
    return first_line(err) + (f" (caused by {first_line(cause)})" if cause is not None else "")


def with_retry(operation: Callable[[], T], what: str, give_up_after: float = 120.0) -> T:
    """Call `operation`; on a lost connection wait 0.5, 1, 2 ... 10 s and call it again, up to
    `give_up_after` seconds; on another database error (Optuna's StorageInternalError) call it again
    at most `OTHER_STORE_ERRORS_RETRIED` times."""
    deadline = time.monotonic() + give_up_after
    delay = 0.5
    others = 0
    while True:
        try:
            return operation()
        except Exception as err:
            lost = is_connection_error(err)
            if lost:
                kind = "storage unreachable"
            elif isinstance(err, StorageInternalError) and others < OTHER_STORE_ERRORS_RETRIED:
                kind, others = "database error", others + 1
            else:
                raise
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("%s during %s (%s); retrying in %.1f s", kind, what, with_cause(err), delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
