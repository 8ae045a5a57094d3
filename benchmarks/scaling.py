"""Throughput of N workers sharing one study on PostgreSQL, relative to one worker.

Each worker is a process running the service's own sweep loop (ask ahead, background
bookkeeping, heartbeat) and storage set-up on a 1-second objective (a sleep: the figure measures
the loop and the shared store, not the cores of this machine) until the study holds `--trials`
finished trials. Workers start together after their imports and set-up (the storage, the
bookkeeping process and its connection, the check for dead workers' trials); the clock runs from
the start signal until the last trial is committed, so process start-up and teardown (one-off
costs per worker) are not in it; every trial's ask, sampling and record are.

The default, 256 trials, is 16 rounds of trials at 16 workers: throughput while the workers run.
With fewer rounds the start weighs more: 16 workers ask for their first trial at the same moment
and queue for 2 cores shared with PostgreSQL, so at 16 workers the last one starts its first
trial about 1 s after the signal, a quarter of a `--trials 64` run (4 rounds). `last start` is
when the last worker started its first trial (seconds after the signal); the load average
printed with each row shows any other load on the machine.

    python benchmarks/scaling.py [--url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--trials 256]

Last line: `scaling_efficiency_16=<x>` (throughput at 16 / (16 x throughput at 1)).
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing as mp
import os
import time
import uuid

import optuna
from optuna.trial import TrialState

from objectives.training.budget import Budget
from sweeps.config.study_file import parse_config
from sweeps.config.target import SweepTarget
from sweeps.loop.runner import open_study
from sweeps.loop.sweep_loop import SweepLoop
from sweeps.trial.run_one import Outcome

WORKER_COUNTS = (1, 2, 4, 8, 16)


class SleepObjective:
    """Stands in for training: one second per trial, whatever the configuration."""

    budget = Budget("updates", 1, 1)

    def run(self, trial, point, pruner) -> Outcome:
        started = time.time()
        time.sleep(1.0)
        return Outcome(TrialState.COMPLETE, value=(math.log2(point.base_lr) + 5) ** 2 + point.batch_size / 1024,
                       attrs={"worker": os.getpid(), "started": started})


def config_for(name: str, n_trials: int, index: int):
    return parse_config({
        "study": {"name": name, "metric": "val_mse", "direction": "minimize", "n_trials": n_trials, "seed": index},
        "pruner": {"name": "none"},
        "objective": {"task": "regression"},
        "budget": {"unit": "updates", "per_trial": 1},
        "search": {"batch_size": {"low": 16, "high": 1024, "power_of_two": True},
                   "base_lr": {"low": 1e-4, "high": 1.0, "log": True}},
    })


def worker(url: str, name: str, n_trials: int, index: int, ready, done) -> None:
    optuna.logging.set_verbosity(logging.WARNING)
    config = config_for(name, n_trials, index)
    study = open_study(config, SweepTarget(url, name, n_trials), n_train=1, sampler_seed=index)
    loop = SweepLoop(study, config, SleepObjective(), 1, n_trials)
    loop.start()  # the bookkeeping process and its connection: set-up, like the storage's
    ready.wait()
    loop.run()
    done.put(time.time())
    done.close()
    done.join_thread()
    # Skip the interpreter's teardown (about 0.6 CPU-seconds with torch loaded): on a small machine a
    # worker that is done would otherwise take CPU from those still running trials. Nothing is lost:
    # every trial is committed before loop.run() returns.
    os._exit(0)


def run(url: str, n_workers: int, n_trials: int) -> tuple[float, int, float]:
    """Seconds from the start signal until the study held its trials; trials finished; seconds from
    the start signal until the last worker started its first trial."""
    name = f"scaling-{n_workers}-{uuid.uuid4().hex[:8]}"
    open_study(config_for(name, n_trials, 0), SweepTarget(url, name, n_trials), n_train=1)
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(n_workers + 1)
    done = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(url, name, n_trials, i, ready, done)) for i in range(n_workers)]
    for p in procs:
        p.start()
    ready.wait()
    started = time.time()
    for _ in procs:
        done.get(timeout=600)
    for p in procs:
        p.join()
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    finished = len(trials)
    assert finished == n_trials, f"{finished} trials finished, not {n_trials}"
    # until the study held its last finished trial (workers notice within their 0.5 s poll)
    elapsed = max(t.datetime_complete.timestamp() for t in trials) - started
    first_starts: dict[int, float] = {}
    for t in trials:
        worker_pid, at = t.user_attrs["worker"], t.user_attrs["started"]
        first_starts[worker_pid] = min(at, first_starts.get(worker_pid, at))
    optuna.delete_study(study_name=name, storage=url)
    return elapsed, finished, max(first_starts.values()) - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get("SWEEPS_TEST_POSTGRES_URL",
                                                        "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--trials", type=int, default=256, help="finished trials per run")
    args = parser.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    throughput = {}
    print(f"{os.cpu_count()} CPU cores; {args.trials} trials of 1 s per row")
    print(f"{'workers':>7}  {'trials':>6}  {'seconds':>8}  {'trials/s':>8}  {'vs 1 worker':>11}  {'efficiency':>10}  "
          f"{'last start':>10}  {'load avg':>8}")
    for n in WORKER_COUNTS:
        elapsed, done, last_start = run(args.url, n, args.trials)
        throughput[n] = done / elapsed
        speedup = throughput[n] / throughput[1]
        print(f"{n:>7}  {done:>6}  {elapsed:>8.2f}  {throughput[n]:>8.2f}  {speedup:>11.2f}  {speedup / n:>10.2f}  "
              f"{last_start:>10.2f}  {os.getloadavg()[0]:>8.2f}", flush=True)
    print(f"scaling_efficiency_16={throughput[16] / (16 * throughput[1]):.3f}")


if __name__ == "__main__":
    main()
