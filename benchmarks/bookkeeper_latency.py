"""How long a pruning decision waits when the bookkeeper is busy: busy against idle, in one process.

A trial waits for its pruning decision at every report, so the bookkeeper answers decisions
(`sweeps.loop.interface.URGENT`) on a second thread, ahead of the next trial's sampling. That they
overtake queued work is behaviour, and tests/test_bookkeeping.py asserts it (the decision comes back
while the slow request ahead of it is still running). How fast they come back is a speed target,
measured here: the same forked `ProcessBookkeeper`, the same stand-in owner, first with nothing
else to do (the baseline), then each time behind a slow request and a queued one.

    python benchmarks/bookkeeper_latency.py [--repeats 20] [--slow 0.5]

Last line: `decision_busy_over_idle=<ratio> idle_ms=<x> busy_ms=<y>` (medians). A ratio near 1 means a
busy bookkeeper delays a decision by nothing; one near `slow / idle` would mean it waited in line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeps.loop.bookkeeper_process import ProcessBookkeeper  # noqa: E402


class Owner:
    """Stands in for the sweep loop: the methods the bookkeeper runs by name."""

    def __init__(self):
        self.gate = threading.Event()

    def start_bookkeeping(self, in_child: bool) -> None:
        pass

    def stop_bookkeeping(self) -> None:
        pass

    def interrupt(self) -> None:
        self.gate.set()

    def where(self) -> int:
        return os.getpid()

    def slow(self, seconds: float) -> str:
        time.sleep(seconds)
        return "slow"

    def decide(self, value: float) -> float:
        return 2 * value


def decision_seconds(book: ProcessBookkeeper) -> float:
    started = time.perf_counter()
    book.submit("decide", 1.0).result(timeout=60)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--slow", type=float, default=0.5, help="seconds the request ahead of the decision takes")
    args = parser.parse_args(argv)
    book = ProcessBookkeeper(Owner())
    try:
        book.submit("where").result(timeout=60)  # the child is up
        idle = [decision_seconds(book) for _ in range(args.repeats)]
        busy = []
        for _ in range(args.repeats):
            slow = book.submit("slow", args.slow)
            queued = book.submit("where")
            busy.append(decision_seconds(book))
            slow.result(timeout=60)
            queued.result(timeout=60)
    finally:
        book.shutdown()
    idle_s, busy_s = statistics.median(idle), statistics.median(busy)
    print(f"decision round trip, median of {args.repeats}: idle {idle_s * 1e3:.2f} ms, "
          f"behind a {args.slow} s request and a queued one {busy_s * 1e3:.2f} ms")
    print(f"decision_busy_over_idle={busy_s / idle_s:.2f} idle_ms={idle_s * 1e3:.3f} busy_ms={busy_s * 1e3:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
