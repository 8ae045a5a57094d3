"""The `--workers` parent's progress, read from the store once a second.

The parent trains nothing, and its workers are separate programs (not forks), so it cannot read
their trainers' shared-memory records. What the store holds is what it shows: each running
trial's number, sampled batch size and LR, how long it has run, the last value it reported to the
pruner (only at the evaluations where the pruner acts; none with `pruner.name: none`), and, when
its heartbeat has stopped, how long until it goes stale and is queued again. A running trial in
the store is one asked for: each worker asks for its next trial while the current one trains, so
a worker holds up to two, and the time shown is since it was asked. No per-trial percentage: the
store does not know how far a trial has trained. Under them, the study's counts, best value,
budget spent by finished trials, and the ETA; for `sweeps slurm --wait`, the array's tasks too
(how many run, wait in the queue, and have registered as workers).

On a terminal those lines are a region redrawn in place, and the workers' own stderr (a failed
trial's line) comes through the parent and is printed above it; anywhere else, one plain line per
finished trial.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.training.budget import Budget
from storage.heartbeats import grace_period_of, heartbeat_ages
from storage.optuna_private import study_id_of, study_storage, trial_id_of
from storage.retry import is_store_error
from sweeps.loop.progress import (
    Eta,
    StudyState,
    finished_text,
    fit,
    point_text,
    sampled_batch_size,
    study_summary,
    terminal_width,
)
from sweeps.text import duration

UP = "\033[{}A"
CLEAR_BELOW = "\033[J"


def running_text(trial: FrozenTrial, metric: str, now: datetime, heartbeat_age: float | None,
                 interval: float | None, grace: float | None) -> str:
    text = f"trial {trial.number} {point_text(sampled_batch_size(trial.params), trial.params.get('base_lr'))}"
    if trial.datetime_start is not None:
        text += f" asked {duration((now - trial.datetime_start).total_seconds())} ago"
    if trial.intermediate_values:
        step = max(trial.intermediate_values)
        text += f", {metric} {trial.intermediate_values[step]:.4f} at step {step}"
    if heartbeat_age is not None and interval and grace and heartbeat_age > interval + 1:
        text += f", no heartbeat for {heartbeat_age:.0f} s: stale in {max(0.0, grace - heartbeat_age):.0f} s"
    return text


class WorkersProgress:
    """Polled by the parent (`__call__` once a second); `forward` passes a worker's stderr through."""

    def __init__(self, study: optuna.Study, n_trials: int, budget: Budget, metric: str, stream: TextIO | None = None,
                 ledger: Callable[[], str] | None = None, per_trial: float | None = None,
                 workers: Callable[[], str] | None = None):
        """`ledger`: reads the study.total_budget figures (spent, left, rate) from the store;
        `per_trial`: what a trial trains, branches included (default the budget's per_trial);
        `workers`: says where the workers are (a Slurm array's tasks), "" for nothing."""
        self.study = study
        self.per_trial = budget.per_trial if per_trial is None else per_trial
        self.ledger = ledger
        self.workers = workers
        self.n_trials = n_trials
        self.budget = budget
        self.metric = metric
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self.eta = Eta()
        self.seen: set[int] = set()  # trials already printed as finished (plain output)
        self.first = True
        self.height = 0  # lines of the region on screen
        self.lines: list[str] = []
        self.lock = threading.Lock()
        storage = study_storage(study)
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self.grace = grace_period_of(storage)

    def __call__(self) -> None:
        """Redraw (a terminal) or print the trials finished since the last call; nothing while the
        store cannot be read (a restart): the next call catches up."""
        try:
            self.show()
        except Exception as err:
            if not is_store_error(err):
                raise

    def show(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        state = StudyState.of(trials, self.budget.unit, self.study)
        now = time.monotonic()
        left = max(0, self.n_trials - state.done) * self.per_trial
        summary = study_summary(state, self.n_trials, self.n_trials * self.per_trial, self.budget.unit, self.metric,
                                0.0, self.eta(now, left), now - self.started,
                                self.ledger() if self.ledger is not None else "",
                                self.workers() if self.workers is not None else "")
        if self.tty:
            self.redraw(self.running_lines(trials), summary)
        else:
            self.plain(trials, summary)

    def running_lines(self, trials: list[FrozenTrial]) -> list[str]:
        running = [t for t in trials if t.state == TrialState.RUNNING]
        ages = heartbeat_ages(study_storage(self.study), study_id_of(self.study)) if self.interval else {}
        now = datetime.now()
        return [running_text(t, self.metric, now, ages.get(trial_id_of(t)), self.interval, self.grace)
                for t in running]

    def plain(self, trials: list[FrozenTrial], summary: dict[str, str]) -> None:
        finished = [t for t in trials if t.state.is_finished() and t.number not in self.seen]
        if self.first:  # a resumed study: its earlier trials are not news
            self.seen.update(t.number for t in finished)
            self.first = False
            return
        for trial in sorted(finished, key=lambda t: t.number):
            self.seen.add(trial.number)
            self.write(f"{finished_text(trial, self.metric)} | {' | '.join(summary.values())}\n")

    def redraw(self, running: list[str], summary: dict[str, str]) -> None:
        width = terminal_width(self.stream) - 1
        with self.lock:
            self.lines = [line[:width] for line in running] + [fit(summary, width)]
            self.write(self.home() + "\n".join(self.lines))
            self.height = len(self.lines)

    def home(self) -> str:
        """Back to the region's first line, with everything from there down cleared."""
        up = UP.format(self.height - 1) if self.height > 1 else ""
        return "\r" + up + CLEAR_BELOW

    def forward(self, worker: subprocess.Popen) -> threading.Thread:
        """Print the worker's stderr lines above the region, until the worker closes it."""
        def copy() -> None:
            for raw in iter(worker.stderr.readline, b""):
                self.print_above(raw.decode(errors="replace").rstrip("\n"))

        thread = threading.Thread(target=copy, name="sweeps-worker-stderr", daemon=True)
        thread.start()
        return thread

    def print_above(self, text: str) -> None:
        with self.lock:
            if not self.tty:
                self.write(text + "\n")
                return
            self.write(self.home() + text + "\n" + "\n".join(self.lines))
            self.height = len(self.lines)

    def close(self) -> None:
        if self.tty and self.height:
            self.write("\n")
            self.height = 0

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
