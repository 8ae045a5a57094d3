"""`--workers N`: N worker processes on this machine sharing one study in one store.

The parent validates the study file, creates the study (and the store's tables) once, then starts
the workers with the store URL in their environment (never on a command line, where `ps` shows
it). It shows the study's progress, passes SIGTERM and Ctrl-C on to the workers, and ends as one
worker does: the summary, then the exit code of what the study holds.

A worker that dies (SIGKILL, the OOM killer, an exception) costs only its running trials: the other
workers fail them once their heartbeat is `study.grace_period` old and run them again. The parent
says so when it sees the worker gone, and before the summary names the trials that were queued
again. Only when every worker failed with the same code of the exit table (a GPU it cannot see, a
store it cannot open) and the study is short does the parent exit with that code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from storage.retry import is_store_error
from storage.sql import ENV_VAR
from sweeps import exits
from sweeps.budget.ledger_view import line_of
from sweeps.config.gpus import GpuAssignment
from sweeps.config.plan import budget_of
from sweeps.config.study_file import SweepConfig
from sweeps.config.target import SweepTarget
from sweeps.errors import Terminated
from sweeps.loop.bookkeeping import finished_count
from sweeps.loop.ending import end_sweep
from sweeps.loop.runner import open_study
from sweeps.loop.workers_progress import WorkersProgress
from sweeps.results.resume import ChangePolicy, complete_note

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
    started = datetime.now()
    lost = start_and_wait(study, config, target, commands, show_progress, gpus)
    trials = study.get_trials(deepcopy=False)
    add_closed_trials(lost, trials, started)
    for worker in lost:
        print(f"warning: {worker.requeued_text(trials)}", file=sys.stderr)
    code = end_sweep(study, target.n_trials, config)  # the same summary as one worker's
    codes = {worker.code for worker in lost}
    if code != exits.OK and len(lost) == n_workers and len(codes) == 1 and codes <= EXIT_CODES:
        return codes.pop()  # every worker stopped for the same reason, which each has said
    return code


EXIT_CODES = {code for name, code in vars(exits).items() if name.isupper()}


@dataclass
class LostWorker:
    """A worker that ended with an error; `held`: the trials running in the store when it was seen
    gone (its own among them; the others' finish, its own are failed and queued again), and those
    it closed itself before it exited (`add_closed_trials`)."""
    number: int  # 1 .. n_workers
    n_workers: int
    pid: int
    returncode: int
    held: set[int] = field(default_factory=set)
    seen_gone: datetime = field(default_factory=datetime.now)

    @property
    def code(self) -> int:
        """Its exit code as a shell reports it: 128 + the signal's number for a killed one."""
        return self.returncode if self.returncode > 0 else 128 - self.returncode

    def __str__(self) -> str:
        how = (f"was killed by {signal.Signals(-self.returncode).name}" if self.returncode < 0
               else f"exited with code {self.returncode}")
        return f"worker {self.number} of {self.n_workers} (pid {self.pid}) {how}"

    def requeued_text(self, trials: list[FrozenTrial]) -> str:
        """Which of its trials were failed and queued again (as which), from the study's trials."""
        retries = {t.system_attrs["retry_history"][-1]: t.number for t in trials
                   if t.system_attrs.get("retry_history")}
        lost = sorted(t.number for t in trials if t.number in self.held and t.state == TrialState.FAIL)
        again = [n for n in lost if n in retries]
        text = str(self)
        if again:
            text += (f"; its trials were queued again: {numbers_text(again)} "
                     f"(run again as {', '.join(str(retries[n]) for n in again)})")
        if not_again := [n for n in lost if n not in retries]:
            text += f"; failed and not queued again (study.max_retry): {numbers_text(not_again)}"
        return text if again or not_again else text + "; it left no trial unfinished"


def add_closed_trials(lost: list[LostWorker], trials: list[FrozenTrial], since: datetime) -> None:
    """Give each lost worker the trials it failed and queued again itself before it exited (an
    interrupted worker does; no other does): those failed since `since` and queued again, each to
    the first worker seen gone after it failed. (The store does not say which worker held a trial.)"""
    retried = {t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")}
    held = set().union(*(worker.held for worker in lost))
    in_order = sorted(lost, key=lambda worker: worker.seen_gone)
    for trial in trials:
        failed = trial.datetime_complete
        if trial.number in retried and trial.number not in held and failed is not None and failed >= since:
            owner = next((worker for worker in in_order if worker.seen_gone >= failed), None)
            if owner is not None:
                owner.held.add(trial.number)


def numbers_text(numbers: list[int]) -> str:
    return f"trial{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"


def start_and_wait(study: optuna.Study, config: SweepConfig, target: SweepTarget, commands: list[list[str]],
                   show_progress: bool = True, gpus: list[GpuAssignment] | None = None) -> list[LostWorker]:
    """Run one worker process per command on `study` (already opened) and show its progress until
    all have ended; the workers that failed, each said in a line as soon as it is seen gone."""
    n_workers = len(commands)
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))  # N workers share the cores, not N x all
    env = {**os.environ, ENV_VAR: target.storage_url, "OMP_NUM_THREADS": threads}
    envs = [{**env, **gpu.env()} for gpu in gpus] if gpus else [env] * n_workers
    metric = config.study.metric
    ledger_line = line_of(study) if config.study.total_budget else None
    progress = (WorkersProgress(study, target.n_trials, budget_of(config), metric, ledger=ledger_line,
                                per_trial=config.planned_per_trial())
                if show_progress else None)
    through_parent = progress is not None and progress.tty  # the workers' lines printed above the live region
    workers = [subprocess.Popen(command, env=envs[i], stderr=subprocess.PIPE if through_parent else None)
               for i, command in enumerate(commands)]
    readers = [progress.forward(w) for w in workers] if through_parent else []
    say = progress.print_above if progress else lambda text: print(text, file=sys.stderr, flush=True)
    lost: dict[int, LostWorker] = {}
    running: set[int] = set()
    try:
        while True:
            alive = [w.poll() is None for w in workers]  # each polled: a dead one gets its returncode
            running = notice_lost(workers, lost, running, running_numbers(study, running), say)
            if not any(alive):
                break
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
    return list(lost.values())


def notice_lost(workers: list[subprocess.Popen], lost: dict[int, LostWorker], before: set[int], now: set[int],
                say: Callable[[str], None]) -> set[int]:
    """Add the workers newly seen ended with an error to `lost`, each said in a line; `before` and
    `now`: the trials running at the previous look and at this one (a worker that closed its own
    trials before it exited held some of the first). Returns `now`, the next look's `before`."""
    for i, worker in enumerate(workers):
        if worker.returncode not in (None, 0) and i not in lost:
            lost[i] = LostWorker(i + 1, len(workers), worker.pid, worker.returncode, before | now)
            say(f"warning: {lost[i]}; the other workers carry on and run its unfinished trials again")
    return now


def running_numbers(study: optuna.Study, last: set[int]) -> set[int]:
    """The numbers of the study's running trials; `last` while the store cannot be read: out of
    reach, or failing a transaction around a restart (the workers ride that out on their own, and
    this look waits for its next turn rather than end the parent while they run)."""
    try:
        return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    except Exception as err:
        if not is_store_error(err):
            raise
        return last


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
