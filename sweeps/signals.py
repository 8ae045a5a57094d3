"""SIGTERM (what `docker stop` sends) ends a sweep the way Ctrl-C does: open trials are failed and
queued again, and the process exits at once instead of leaving its trial RUNNING."""

from __future__ import annotations

import signal
import threading


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM; a BaseException so no `except Exception` swallows it."""


def raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signum}")


def install() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)
