"""Live progress: the trial training now, the study's counts, best value, budget spent and ETA.

On a terminal, one line redrawn in place once a second by a thread of the bookkeeping process
(which owns the study and shares no GIL with training): the running trial (number, batch size,
LR, how far into its budget, its last evaluation), read from the trainer's shared-memory record
(`objectives.training.live`), then the study. One line, cut to the terminal's width, so a
message another process prints (a failed trial, from the training process) needs no
coordination: it clears the line, prints itself, and the next redraw starts below it.

Anywhere else (a log, CI, docker), one plain line per finished trial, no carriage returns.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.training.budget import Budget
from objectives.training.live import LiveTrial, LiveView
from sweeps.text import duration, human, percent
from sweeps.trial.record import TrialRecord, consumed

CLEAR_LINE = "\r\033[K"
REDRAW_S = 1.0
WAIT_REPEAT_S = 10.0  # a plain log repeats the waiting message this often
STATE_WORDS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


@dataclass(frozen=True)
class StudyState:
    """The study's finished trials as of the last read (refreshed after each trial)."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    spent: float = 0.0  # budget units used by every trial that recorded its use
    best_value: float | None = None
    best_trial: int | None = None

    @property
    def done(self) -> int:
        return self.complete + self.pruned

    @classmethod
    def of(cls, trials: list[FrozenTrial], unit: str, study: optuna.Study) -> StudyState:
        counts = {state: 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        spent = 0.0
        for t in trials:
            if t.state in counts:
                counts[t.state] += 1
            spent += consumed(t, unit)
        try:
            best = study.best_trial
            best_value, best_trial = best.value, best.number
        except ValueError:
            best_value = best_trial = None
        return cls(counts[TrialState.COMPLETE], counts[TrialState.PRUNED], counts[TrialState.FAIL], spent,
                   best_value, best_trial)


class Eta:
    """Seconds to go, from the budget left and the rate it went down since the display started."""

    def __init__(self) -> None:
        self.first: tuple[float, float] | None = None  # (time, budget left)

    def __call__(self, now: float, left: float) -> float | None:
        if left <= 0:  # nothing left to train takes no time, whatever the rate
            return 0.0
        if self.first is None:
            self.first = (now, left)
            return None
        since, left_then = now - self.first[0], self.first[1] - left
        if since < 2 or left_then <= 0:
            return None
        return left / (left_then / since)


def study_summary(state: StudyState, n_trials: int, total: float, unit: str, metric: str, running: float,
                  eta: float | None, elapsed: float, ledger: str = "", workers: str = "") -> dict[str, str]:
    """The study's parts of a progress line, in the order shown: counts, best, budget (`running`: what
    the trial training now has spent, beside the finished trials' `state.spent`, of the `total`), the
    ledger and the workers when there is something to say, ETA, time so far. The one summary of
    `sweeps run`, alone (`Progress`) and as the parent of --workers (`WorkersProgress`)."""
    best = (f"best {metric} -" if state.best_value is None
            else f"best {metric} {state.best_value:.4f} (trial {state.best_trial})")
    spent = state.spent + running
    return {"counts": f"{state.done}/{n_trials} done: {state.complete} complete, {state.pruned} pruned, "
                      f"{state.failed} failed",
            "best": best,
            "budget": f"budget {human(spent)}/{human(total)} {unit} ({percent(spent, total)})",
            **({"ledger": ledger} if ledger else {}),
            **({"workers": workers} if workers else {}),
            "eta": f"ETA {'-' if eta is None else duration(eta)}",
            "time": duration(elapsed)}


def point_text(batch_size: int | str | None, lr: float | None) -> str:
    """The point a trial trains, as every progress line shows it after the trial's number."""
    return f"(batch {'-' if batch_size is None else batch_size}, lr {'-' if lr is None else f'{lr:.3g}'})"


def trial_text(view: LiveView, metric: str) -> str:
    who = f"trial {view.trial} {point_text(view.batch_size, view.lr)}"
    if view.group > 1:
        who += f" +{view.group - 1} fused"
    if view.planned_units <= 0:
        return f"{who} starting"
    last = f"{metric} {view.eval_value:.4f}" if view.eval_value is not None else "no evaluation yet"
    return f"{who} {100 * view.fraction:.0f}%, {last}"


class Progress:
    """An Optuna callback, plus the display thread (`start`/`stop`, in the bookkeeping process)."""

    def __init__(self, n_trials: int, budget: Budget, metric: str, stream: TextIO | None = None,
                 live_trial: LiveTrial | None = None, ledger: Callable[[], str] | None = None,
                 per_trial: float | None = None):
        """`ledger`: reads the study.total_budget figures (spent, left, rate) from the store; called
        after each recorded trial, never by the redraw thread. `per_trial`: what a trial trains,
        branches included (`SweepConfig.planned_per_trial`; default the budget's per_trial)."""
        self.n_trials = n_trials
        self.per_trial = budget.per_trial if per_trial is None else per_trial
        self.ledger = ledger
        self.ledger_text = ""
        self.budget = budget
        self.metric = metric
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.live_trial = live_trial
        self.started = time.monotonic()
        self.state = StudyState()
        self.eta = Eta()
        self.waiting: str | None = None
        self.waiting_shown = (None, 0.0)  # (kind, when) last printed in a plain log
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.drawn = False  # a live line is on the screen, not yet ended with a newline

    # --- the study ----------------------------------------------------------------------------
    def refresh(self, study: optuna.Study) -> None:
        self.state = StudyState.of(study.get_trials(deepcopy=False), self.budget.unit, study)
        if self.ledger is not None:
            self.ledger_text = self.ledger()
        if self.eta.first is None:  # the rate counts from the first read of the study
            self.eta(time.monotonic(), self.left(0.0))

    def left(self, running: float) -> float:
        """Budget units to go: every slot not done yet, less what the running trial has trained."""
        return max(0.0, max(0, self.n_trials - self.state.done) * self.per_trial - running)

    def __call__(self, study: optuna.Study, trial: FrozenTrial | None) -> None:
        """After each recorded trial (the bookkeeper's callback); `trial` None: just show the study."""
        self.refresh(study)
        text = " | ".join(self.summary(time.monotonic(), None).values())
        if trial is not None:
            text = f"{finished_text(trial, self.metric)} | {text}"
        if not self.tty:
            self.write(text + "\n")
        elif self.thread is not None:
            self.wake.set()
        else:
            self.draw()

    def summary(self, now: float, view: LiveView | None) -> dict[str, str]:
        """The study's parts of the line (`study_summary`), the running trial's budget counted in."""
        running = view.spent_units if view is not None else 0.0
        return study_summary(self.state, self.n_trials, self.n_trials * self.per_trial, self.budget.unit,
                             self.metric, running, self.eta(now, self.left(running)), now - self.started,
                             self.ledger_text)

    # --- the live line ----------------------------------------------------------------------------
    def parts(self) -> dict[str, str]:
        view = self.live_trial.read() if self.live_trial is not None else None
        head = self.waiting or (trial_text(view, self.metric) if view is not None else None)
        return {**({"trial": head} if head else {}), **self.summary(time.monotonic(), view)}

    def draw(self) -> None:
        self.write(CLEAR_LINE + fit(self.parts(), terminal_width(self.stream) - 1))
        self.drawn = True

    def start(self) -> None:
        """Redraw once a second from a thread of this process (a terminal only)."""
        if self.tty and self.thread is None:
            self.stopped.clear()
            self.thread = threading.Thread(target=self.redraw, name="sweeps-progress", daemon=True)
            self.thread.start()

    def redraw(self) -> None:
        while not self.stopped.is_set():
            try:
                self.draw()
            except (OSError, ValueError):  # the terminal went away: training goes on regardless
                return
            self.wake.wait(REDRAW_S)
            self.wake.clear()

    def stop(self) -> None:
        """End the thread after one last redraw, and end the line."""
        if self.thread is None:
            return
        self.stopped.set()
        self.wake.set()
        self.thread.join(timeout=5)
        self.thread = None
        self.draw()
        self.close()

    def close(self) -> None:
        if self.drawn:
            self.write("\n")
            self.drawn = False

    def write(self, text: str) -> None:
        with self.lock:
            self.stream.write(text)
            self.stream.flush()

    # --- waiting for other workers' trials --------------------------------------------------------
    def set_waiting(self, text: str | None) -> None:
        """Shown instead of a running trial; in a plain log, printed when it starts and every 10 s."""
        self.waiting = text
        if text is None or self.tty:
            return
        kind, when = self.waiting_shown
        now = time.monotonic()
        if kind != text.split(":")[0] or now - when >= WAIT_REPEAT_S:
            self.waiting_shown = (text.split(":")[0], now)
            self.write(text + "\n")


def finished_text(trial: FrozenTrial, metric: str) -> str:
    """A finished trial in a few words; one that failed before its plan shows its sampled point."""
    record = TrialRecord.of(trial)
    batch_size = record.batch_size if record.batch_size is not None else sampled_batch_size(trial.params)
    lr = record.lr if record.lr is not None else trial.params.get("base_lr")
    who = point_text(batch_size, lr)
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        return f"trial {trial.number} complete: {metric} {trial.value:.4f} {who}"
    return f"trial {trial.number} {STATE_WORDS.get(trial.state, trial.state.name.lower())} {who}"


def sampled_batch_size(params: dict) -> int | str:
    if "batch_size_log2" in params:  # a power-of-two range is searched by its exponent
        return 2 ** int(params["batch_size_log2"])
    return params.get("batch_size", "-")


# what goes first when the line is too wide: the running trial and the counts stay
DROPPED_FIRST = ("time", "ledger", "best", "budget", "eta")


def fit(parts: dict[str, str], width: int) -> str:
    """The parts joined with " | ", dropping the least telling ones until the line fits `width`
    (a wrapped line cannot be redrawn in place); cut at the width as a last resort."""
    parts = dict(parts)
    for name in DROPPED_FIRST:
        if len(" | ".join(parts.values())) <= width:
            break
        parts.pop(name, None)
    return " | ".join(parts.values())[:width]


def terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 120
    except (OSError, ValueError, AttributeError):
        return 120
