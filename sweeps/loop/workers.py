"""`--workers N`: N worker processes on this machine sharing one study in one store.

The parent validates the study file, creates the study (and the store's tables) once, then starts
the workers with the store URL in their environment (never on a command line, where `ps` shows
it). It shows the study's progress, passes SIGTERM and Ctrl-C on to the workers, and exits with
the first failing worker's code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import optuna

from storage.sql import ENV_VAR
from sweeps.config.plan import budget_of
from sweeps.config.study_file import SweepConfig
from sweeps.config.target import SweepTarget
from sweeps.loop.books import finished_count
from sweeps.loop.ending import end_sweep
from sweeps.loop.gpus import GpuAssignment
from sweeps.loop.resume import ChangePolicy, complete_note
from sweeps.loop.runner import open_study
from sweeps.loop.signals import Terminated
from sweeps.loop.workers_progress import WorkersProgress
from sweeps.results.ledger_view import line_of

STOP_WAIT_S = 7  # then SIGKILL: the parent exits within 10 s of a SIGTERM, as docker stop expects


def worker_command(study_file: str, target: SweepTarget, index: int | None,
                   overrides: Sequence[str] = (), log_file: str | None = None) -> list[str]:
    """A worker's command line; its store URL travels in the environment (`ENV_VAR`), exactly as
    the parent resolved it, and wins there over the study file's own `study.storage`. The
    parent's `--set` overrides go along, in order, so every worker trains the same config."""
    fixed_seed = [] if index is None else ["--worker-index", str(index)]
    sets = [arg for text in overrides for arg in ("--set", text)]
    # every worker appends to the parent's log file (each line names its process)
    log = ["--log-file", os.path.abspath(log_file)] if log_file else []
    # through the console entry, which keeps a user's own storage.py or objectives.py in the
    # working directory from shadowing the project's packages
    return [sys.executable, "-m", "sweeps.console", "run", study_file, "--quiet", "--as-worker", *fixed_seed,
            "--study-name", target.study_name, "--n-trials", str(target.n_trials), *sets, *log]


def run_workers(study_file: str, config: SweepConfig, target: SweepTarget, n_workers: int, n_train: int,
                show_progress: bool = True, first_index: int | None = None,
                gpus: list[GpuAssignment] | None = None, overrides: Sequence[str] = (),
                log_file: str | None = None, changes: ChangePolicy = "check") -> int:
    """`gpus`: worker i runs with gpus[i]'s environment (only its GPU visible); the parent itself
    stays off the GPUs. The parent checks the search once (`changes`); its workers do not."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as in each worker: the progress line says it all
    study = open_study(config, target, n_train, overrides=overrides, changes=changes)
    if finished_count(study) >= target.n_trials:  # nothing left to do: start no worker
        print(complete_note(finished_count(study), target.n_trials))
        return end_sweep(study, target.n_trials, config)
    commands = [worker_command(study_file, target, None if first_index is None else first_index + i, overrides,
                               log_file)
                for i in range(n_workers)]
    failed = start_and_wait(study, config, target, commands, show_progress, gpus)
    if failed:
        return failed
    return end_sweep(study, target.n_trials, config)  # the same summary as one worker's


def start_and_wait(study: optuna.Study, config: SweepConfig, target: SweepTarget, commands: list[list[str]],
                   show_progress: bool = True, gpus: list[GpuAssignment] | None = None) -> int:
    """Run one worker process per command on `study` (already opened) and show its progress until
    all have ended; 0, or the first failing worker's exit code."""
    n_workers = len(commands)
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))  # N workers share the cores, not N x all
    env = {**os.environ, ENV_VAR: target.storage_url, "OMP_NUM_THREADS": threads}
    envs = [{**env, **gpu.env()} for gpu in gpus] if gpus else [env] * n_workers
    metric = config.study.metric
    ledger_line = line_of(study) if config.study.total_budget else None
    progress = (WorkersProgress(study, target.n_trials, budget_of(config), metric, ledger=ledger_line)
                if show_progress else None)
    through_parent = progress is not None and progress.tty  # the workers' lines printed above the live region
    workers = [subprocess.Popen(command, env=envs[i], stderr=subprocess.PIPE if through_parent else None)
               for i, command in enumerate(commands)]
    readers = [progress.forward(w) for w in workers] if through_parent else []
    try:
        while any(w.poll() is None for w in workers):
            if progress:
                progress()
            time.sleep(1.0)
    except (KeyboardInterrupt, Terminated):
        stop(workers)
        raise
    finally:
        for reader in readers:
            reader.join(timeout=5)
        if progress:
            progress()
            progress.close()
    failed = [w.returncode for w in workers if w.returncode != 0]
    if failed:  # a worker killed by a signal: 128 + its number, as a shell reports it
        return failed[0] if failed[0] > 0 else 128 - failed[0]
    return 0


def stop(workers: list[subprocess.Popen]) -> None:
    """SIGTERM each worker (each fails and requeues its open trials), then SIGKILL stragglers."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    for worker in workers:
        try:
            worker.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
