"""Throughput of N workers sharing one study on PostgreSQL, relative to one worker.

Each worker is a process running the service's own sweep loop (ask ahead, background
bookkeeping, heartbeat) and storage set-up on a 1-second objective (a sleep: the figure measures
the loop and the shared store, not the 2 cores of this machine) until the study holds `--trials`
finished trials. Workers start together after their imports; the clock runs from the start
signal to the last worker's exit.

    python benchmarks/scaling.py [--url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--trials 64]

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

from sweeps.budget import Budget
from sweeps.config import parse_config
from sweeps.loop import SweepLoop
from sweeps.objective import Outcome
from sweeps.runner import SweepTarget, open_study

WORKER_COUNTS = (1, 2, 4, 8, 16)


class SleepObjective:
    """Stands in for training: one second per trial, whatever the configuration."""

    budget = Budget("updates", 1, 1)

    def run(self, trial, point, pruner) -> Outcome:
        time.sleep(1.0)
        return Outcome(TrialState.COMPLETE, value=(math.log2(point.base_lr) + 5) ** 2 + point.batch_size / 1024)


def config_for(name: str, n_trials: int, index: int):
    return parse_config({
        "study": {"name": name, "metric": "loss", "direction": "minimize", "n_trials": n_trials, "seed": index},
        "pruner": {"name": "none"},
        "objective": {"task": "regression"},
        "budget": {"unit": "updates", "per_trial": 1},
        "search": {"batch_size": {"low": 16, "high": 1024, "power_of_two": True},
                   "base_lr": {"low": 1e-4, "high": 1.0, "log": True}},
    })


def worker(url: str, name: str, n_trials: int, index: int, ready) -> None:
    optuna.logging.set_verbosity(logging.WARNING)
    config = config_for(name, n_trials, index)
    study = open_study(config, SweepTarget(url, name, n_trials), n_train=1, sampler_seed=index)
    loop = SweepLoop(study, config, SleepObjective(), 1, n_trials)
    ready.wait()
    loop.run()


def run(url: str, n_workers: int, n_trials: int) -> tuple[float, int]:
    name = f"scaling-{n_workers}-{uuid.uuid4().hex[:8]}"
    open_study(config_for(name, n_trials, 0), SweepTarget(url, name, n_trials), n_train=1)
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(n_workers + 1)
    procs = [ctx.Process(target=worker, args=(url, name, n_trials, i, ready)) for i in range(n_workers)]
    for p in procs:
        p.start()
    ready.wait()
    started = time.perf_counter()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - started
    done = len(optuna.load_study(study_name=name, storage=url).get_trials(states=(TrialState.COMPLETE,)))
    assert done == n_trials, f"{done} trials finished, not {n_trials}"
    return elapsed, done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get("SWEEPS_TEST_POSTGRES_URL",
                                                        "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--trials", type=int, default=64, help="finished trials per run")
    args = parser.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    throughput = {}
    print(f"{'workers':>7}  {'trials':>6}  {'seconds':>8}  {'trials/s':>8}  {'vs 1 worker':>11}  {'efficiency':>10}")
    for n in WORKER_COUNTS:
        elapsed, done = run(args.url, n, args.trials)
        throughput[n] = done / elapsed
        speedup = throughput[n] / throughput[1]
        print(f"{n:>7}  {done:>6}  {elapsed:>8.2f}  {throughput[n]:>8.2f}  {speedup:>11.2f}  {speedup / n:>10.2f}")
    print(f"scaling_efficiency_16={throughput[16] / (16 * throughput[1]):.3f}")


if __name__ == "__main__":
    main()
