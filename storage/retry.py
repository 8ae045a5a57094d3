"""Retry a storage operation with backoff while the database is unreachable (a server restart)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import DBAPIError, OperationalError

T = TypeVar("T")
logger = logging.getLogger("sweeps")


def is_connection_error(err: BaseException) -> bool:
    if isinstance(err, OperationalError):
        return True
    if isinstance(err, DBAPIError) and err.connection_invalidated:
        return True
    cause = err.__cause__
    return isinstance(err, StorageInternalError) and cause is not None and is_connection_error(cause)


def with_retry(operation: Callable[[], T], what: str, give_up_after: float = 120.0) -> T:
    """Call `operation`; on a lost connection wait 0.5, 1, 2 ... 10 s and call it again."""
    deadline = time.monotonic() + give_up_after
    delay = 0.5
    while True:
        try:
            return operation()
        except Exception as err:
            if not is_connection_error(err) or time.monotonic() + delay > deadline:
                raise
            logger.warning("storage unreachable during %s (%s); retrying in %.1f s",
                           what, str(err).splitlines()[0][:200], delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
