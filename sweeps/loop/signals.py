"""SIGTERM (what `docker stop`, `scancel` and a Kubernetes eviction send) ends a sweep the way Ctrl-C
does: open trials are failed and queued again, and the process exits at once instead of leaving its
trial RUNNING. A second SIGTERM changes nothing."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from sweeps.errors import Terminated


def raise_terminated(signum, frame) -> None:
    """The first SIGTERM stops the sweep; any later one is ignored, so it cannot interrupt the closing
    of the open trials this one starts. Slurm signals every process of a job, and its batch script
    (`sweeps slurm`) passes the signal on too: a worker may get two within milliseconds."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(f"signal {signum}")


def install() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)


@contextmanager
def ignored_while_closing():
    """While a sweep closes its open trials after SIGTERM or Ctrl-C, a second signal (the --workers
    parent passes Ctrl-C on as SIGTERM) must not interrupt that; the handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
