"""Where the service's time outside training goes: the steps of one digits sweep, timed.

Runs the service sweep of `benchmarks/overhead.py` (after a 3-trial plain Optuna sweep, as that
benchmark does, so one-time imports are paid first) with the parent's steps wrapped in timers,
and prints each step's calls and total milliseconds. `asked_from` is the training side waiting
for the next trial's sampling; `submit` is sending requests to the bookkeeper. What the steps do
not cover (the wait for the study's final note and figures, the loop's own steps) is the rest of
`outside`. The bookkeeper's own work beside training is in none of them.

    python benchmarks/overhead_breakdown.py [--seed 0] [--timeline]
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402

from sweeps.loop import bookkeeper_process as bookkeeping
from sweeps.loop import runner  # noqa: E402
from sweeps.loop import sweep_loop as loop
from sweeps.publish import hooks as publish
from sweeps.trial import checkpoints
from sweeps.trial import run_one as objective

events: list[tuple[str, float, float]] = []
clock = {"t0": 0.0}


def timed(owner, name: str, label: str | None = None) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            events.append((label or name, started - clock["t0"], time.perf_counter() - started))

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeline", action="store_true", help="also print every timed step over 2 ms")
    args = parser.parse_args()
    for owner, name in [(runner, "load_task"), (runner, "open_study"), (loop, "start_bookkeeper"),
                        (loop, "asked_from"), (objective.SweepObjective, "prepare"),
                        (objective.SweepObjective, "train"), (checkpoints.CheckpointKeeper, "offer"),
                        (bookkeeping.ProcessBookkeeper, "submit"), (bookkeeping.ProcessBookkeeper, "shutdown")]:
        timed(owner, name)
    timed(publish.DashboardHooks, "__init__", "dashboard hooks")
    optuna.logging.set_verbosity(logging.WARNING)
    overhead.warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        config = overhead.service_config(Path(tmp), 30, None, args.seed)
        overhead.plain_sweep(f"sqlite:///{tmp}/plain.db", 3, config)
        events.clear()
        clock["t0"] = time.perf_counter()
        measured, _ = overhead.service_sweep(config)
    outside = measured.wall - measured.inside
    print(f"wall {measured.wall:.3f} s, train+eval {measured.inside:.3f} s, outside {outside:.3f} s")
    totals: dict[str, list[float]] = {}
    for name, _, seconds in events:
        entry = totals.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds
    for name, (calls, seconds) in totals.items():
        print(f"{name:<20} {calls:>4} calls {1000 * seconds:>9.1f} ms")
    if args.timeline:
        for name, at, seconds in events:
            if seconds > 0.002:
                print(f"{1000 * at:9.1f} ms  {1000 * seconds:8.1f} ms  {name}")


if __name__ == "__main__":
    main()
