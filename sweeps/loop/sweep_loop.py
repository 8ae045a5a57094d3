"""The sweep loop, in the training process: train one trial after another while the bookkeeper
(`sweeps.loop.bookkeeping`, in its own process) does Optuna's share beside it.

Asking the sampler for a trial, taking a pruning decision and recording a finished trial each
cost milliseconds of sampler and storage work, together as much as a short trial's training.
They run in the bookkeeper (`sweeps.loop.bookkeeper_process`: a forked process, so they share no GIL with
training), in order, while training goes on:
- the next trial is asked (its parameters sampled) while the current one trains; TPE's constant
  liar sees the current trial as running, as a second worker would;
- at the evaluations where the pruner can act, the decision is taken in the background, and a
  pruned trial stops at its next evaluation;
- a finished trial's attributes, learning curve and state are written in one transaction.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from sweeps.budget.spending import Spending
from sweeps.config.study_file import SweepConfig
from sweeps.loop import signals
from sweeps.loop.bookkeeper_process import start_bookkeeper
from sweeps.loop.bookkeeping import Books, Callback
from sweeps.loop.interface import BooksClient, TrialRef
from sweeps.loop.progress import Progress
from sweeps.search.space import Suggestion
from sweeps.search.strategies import PruningSteps
from sweeps.trial.run_one import Outcome, SweepObjective

logger = logging.getLogger("sweeps")


@dataclass
class Asked:
    trial: TrialRef
    point: Suggestion
    decisions: list[Future]


class SweepLoop:
    """Run trials until the study holds `n_trials` finished ones (across all workers)."""

    def __init__(self, study: optuna.Study, config: SweepConfig, objective: SweepObjective, n_train: int,
                 n_trials: int, callbacks: list[Callback] | None = None,
                 at_end: Callable[[optuna.Study], None] | None = None, spending: Spending | None = None,
                 display: Progress | None = None):
        self.config = config
        self.objective = objective
        self.n_train = n_train
        self.has_end = at_end is not None
        self.failures_in_a_row = 0
        self.last_error: str | None = None
        # what the bookkeeper runs, handed over whole at the fork (or to its thread)
        self.books = Books(study, config, n_trials, getattr(objective, "keeper", None), callbacks, at_end,
                           spending=spending, display=display, identity=getattr(objective, "identity", None))
        self.book: BooksClient | None = None

    @property
    def gave_up(self) -> bool:
        return self.failures_in_a_row >= self.config.study.max_failures

    def start(self) -> None:
        """Start the bookkeeper (a process: a fork and its own database connection); `run` starts
        it when this was not called first."""
        if self.book is None:
            self.book = BooksClient(start_bookkeeper(self.books))

    def run(self) -> None:
        pending: list[Future] = []
        self.start()
        next_ask = self.book.ask()
        current: Asked | None = None
        # study.total_budget: a trained trial's record waits in here until the next trial's reservation
        # is queued ahead of it, so the next trial starts without waiting for the last one's record
        # (at 64 workers on one budget row that wait was most of the time between two trials)
        trained: tuple | None = None
        try:
            while True:
                current = asked_from(next_ask)
                if current is None:  # counted with this process's trials still open: count again once told
                    pending, trained = self.record(trained, pending), None
                    next_ask = self.book.ask(wait_for_others=True)
                    current = asked_from(next_ask)
                    if current is None:
                        break
                if self.books.spending is not None:  # study.total_budget: book the trial before it trains
                    next_ask = nothing_asked()  # the one asked is `current` now: abort must not close it twice
                    booking = self.book.reserve(current.trial.trial_id, current.point, trained is not None)
                    pending, trained = self.record(trained, pending), None
                    granted = booking.result()
                    if granted is None:  # it may fit once the last trial has settled: ask again after it
                        pending[-1].result()
                        granted = self.book.reserve(current.trial.trial_id, current.point).result()
                    if not granted:
                        current = None  # closed unstarted by the bookkeeper: the budget is spent
                        break
                # marked before the next ask, which counts the other workers' trials in training
                pending.append(self.book.started(current.trial.trial_id))
                next_ask = self.book.ask()
                outcome = self.objective.run(current.trial, current.point, self.pruner_for(current))
                log_failure(current.trial, outcome)
                self.count(outcome)
                settled(current.decisions)  # no pruning decision may still be writing to a trial being closed
                trained = (current.trial.trial_id, dataclasses.replace(outcome, error=None), self.failures_in_a_row)
                current = None
                if self.books.spending is None or self.gave_up:
                    pending, trained = self.record(trained, pending), None
                if self.gave_up:
                    # the task is broken: the trial asked ahead is closed, not queued to fail again
                    self.close_ahead(next_ask, f"not started: {self.failures_in_a_row} trials in a row failed",
                                     requeue=False)
                    break
                pending = raise_errors_of_done(pending)
            if self.has_end:
                self.book.end().result()
        except BaseException as err:  # Ctrl-C, SIGTERM, a storage failure: close what is open, then stop
            if trained is not None:  # trained to its end: recorded, not closed as interrupted
                try:
                    pending = self.record(trained, pending)
                except Exception:
                    logger.exception("could not record trial %d", trained[0])
            self.abort(current, next_ask, err)
            raise
        finally:
            self.book.shutdown()
        raise_errors_of_done(pending)

    def record(self, trained: tuple | None, pending: list[Future]) -> list[Future]:
        """Queue the trained trial's record (`Books.finish`), if one waits."""
        return pending if trained is None else [*pending, self.book.finish(*trained)]

    def count(self, outcome: Outcome) -> None:
        if outcome.state == TrialState.FAIL:
            self.failures_in_a_row += 1
            self.last_error = str(outcome.record.error)
        else:
            self.failures_in_a_row = 0

    def close_ahead(self, next_ask: Future, reason: str, requeue: bool = True) -> None:
        ahead = asked_from(next_ask)
        if ahead is not None:
            self.book.close_unfinished(ahead.trial.trial_id, reason, requeue).result()

    def pruner_for(self, asked: Asked) -> Callable[[float, int, float | None], bool]:
        acts_at = PruningSteps(self.config.pruner, self.objective.budget, self.n_train,
                               self.config.budget.horizon_units())
        at_once = self.config.budget.horizons is not None

        def report(value: float, step: int, value_se: float | None = None) -> bool:
            # The decision taken at one evaluation applies at the next: the pruner works while the
            # trial trains on, and waiting here is rare (only when the bookkeeper is still busy).
            if any(d.result() for d in asked.decisions):
                return True
            if acts_at(step):
                asked.decisions.append(self.book.decide(asked.trial.trial_id, value, step, value_se))
                if at_once:  # a horizon is judged when it is finished, before the run trains on to the next
                    return asked.decisions[-1].result()
            return False

        return report

    def abort(self, current: Asked | None, next_ask: Future, err: BaseException) -> None:
        """Fail the trial that was training and the one asked ahead, so none stays RUNNING."""
        reason = f"interrupted: {type(err).__name__}"
        self.book.interrupt()
        signalled = isinstance(err, (KeyboardInterrupt, signals.Terminated))
        with signals.ignored_while_closing() if signalled else nullcontext():
            try:
                if current is not None:
                    settled(current.decisions)
                    self.book.close_unfinished(current.trial.trial_id, reason).result()
                self.close_ahead(next_ask, "not started: " + reason)
            except Exception:
                logger.exception("could not close the open trials")


def asked_from(future: Future) -> Asked | None:
    answer = future.result()
    return None if answer is None else Asked(*answer, [])


def nothing_asked() -> Future:
    future: Future = Future()
    future.set_result(None)
    return future


def settled(futures: list[Future]) -> None:
    """Wait until each future is done, whatever its outcome."""
    for future in futures:
        future.exception()


def log_failure(trial: TrialRef, outcome: Outcome) -> None:
    error = outcome.error
    if error is not None:
        logger.warning("trial %d failed: %s", trial.number, outcome.record.error,
                       exc_info=(type(error), error, error.__traceback__))


def raise_errors_of_done(futures: list[Future]) -> list[Future]:
    """Re-raise a bookkeeping failure on the training thread; return the futures still running."""
    for future in futures:
        if future.done():
            future.result()
    return [f for f in futures if not f.done()]
