"""Live progress: trials finished / pruned / failed, best value so far, and budget spent."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.training.budget import Budget
from sweeps.trial.record import consumed


def human(x: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{suffix}"
    return f"{x:.4g}"


class Progress:
    """An Optuna callback; one line rewritten in place on a terminal, one line per trial otherwise."""

    def __init__(self, n_trials: int, budget: Budget, metric: str, stream: TextIO | None = None,
                 ledger: Callable[[], str] | None = None):
        """`ledger`: the study.total_budget figures (spent, left, rate), read at each line."""
        self.n_trials = n_trials
        self.budget = budget
        self.metric = metric
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.started = time.monotonic()
        self.last: str | None = None
        self.ledger = ledger

    def line(self, study: optuna.Study) -> str:
        trials = study.get_trials(deepcopy=False)
        counts = {state: 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        spent = 0.0
        for t in trials:
            if t.state in counts:
                counts[t.state] += 1
            spent += consumed(t, self.budget.unit)
        done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        total = self.n_trials * self.budget.per_trial
        try:
            best = f"best {self.metric} {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = f"best {self.metric} -"
        return (
            f"[{done}/{self.n_trials}] complete {counts[TrialState.COMPLETE]}"
            f" pruned {counts[TrialState.PRUNED]} failed {counts[TrialState.FAIL]} | {best}"
            f" | budget spent {human(spent)} of {human(total)} {self.budget.unit}"
            f" ({100 * spent / total:.1f}%)" + (f" | {figures}" if self.ledger and (figures := self.ledger()) else "")
        )

    def __call__(self, study: optuna.Study, trial: FrozenTrial | None) -> None:
        text = self.line(study)
        if text == self.last:  # polled by the --workers parent: print changes only
            return
        self.last = text
        text += f" | {time.monotonic() - self.started:.0f}s"
        if self.live:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
