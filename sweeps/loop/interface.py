"""What the training process and the bookkeeper say to each other: one typed call per request.

The training process (`sweeps.loop.sweep_loop`) never touches Optuna; the bookkeeper
(`sweeps.loop.bookkeeping`, in its own process) never trains. `BooksClient` is the training side's
handle: each method names a method of `Bookkeeping` and returns its answer as a Future.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from sweeps.search.space import Suggestion
from sweeps.trial.run_one import Outcome


@dataclass(frozen=True)
class TrialRef:
    """What training needs of a trial the bookkeeper asked for (picklable, no study attached);
    the names match optuna.Trial's, so the objective and the checkpoint keeper take either."""

    number: int
    _trial_id: int
    params: dict
    retry_of: int | None = None  # the number of the trial this one retries (Optuna's "failed_trial")
    fixed_seed: int | None = None  # the training seed it was queued with (a confirmation run), else derived

    @property
    def trial_id(self) -> int:
        return self._trial_id


class Bookkeeping(Protocol):
    """Everything the bookkeeper does for the training process (run in the bookkeeper)."""

    def start_bookkeeping(self, in_child: bool) -> None:
        """Set up in the bookkeeper's own process or thread, before any request."""

    def stop_bookkeeping(self) -> None: ...

    def interrupt(self) -> None:
        """Called at once, ahead of any queued work: the sweep is stopping."""

    def ask(self, wait_for_others: bool = False, fixed: dict | None = None) -> tuple[TrialRef, Suggestion] | None:
        """The next trial to train, or None when the study has its trials (`fixed`: parameters it takes as given)."""

    def started(self, trial_id: int) -> None:
        """The training process began training the trial (until then it was asked ahead)."""

    def reserve(self, trial_id: int, point: Suggestion, tentative: bool = False) -> bool | None:
        """Book the trial's planned cost in the total budget's ledger; False: it does not fit (closed).
        `tentative` (asked while this worker's last trial is not yet settled): None instead of a
        refusal, for the caller to ask again once that trial is recorded and settled."""

    def decide(self, trial_id: int, value: float, step: int, value_se: float | None = None) -> bool:
        """Report an evaluation (and its standard error, when measured); True when the pruner stops the trial."""

    def finish(self, trial_id: int, outcome: Outcome, failures_in_a_row: int) -> None:
        """Record a trained trial: its attributes, learning curve and state."""

    def close_unfinished(self, trial_id: int, reason: str, requeue: bool = True) -> None:
        """Fail a trial that will not be trained (and queue its configuration again)."""

    def end(self) -> None:
        """After the last trial: the study's closing notes and figures."""


class Transport(Protocol):
    def submit(self, method: str, *args) -> Future: ...

    def interrupt(self) -> None: ...

    def shutdown(self) -> None: ...


URGENT = frozenset({Bookkeeping.decide.__name__})  # run at once, not behind the next trial's sampling


class BooksClient:
    """The training process's side of the conversation."""

    def __init__(self, transport: Transport):
        self.transport = transport

    def ask(self, wait_for_others: bool = False, fixed: dict | None = None) -> Future:
        # Future[tuple[TrialRef, Suggestion] | None]
        return self.transport.submit(Bookkeeping.ask.__name__, wait_for_others, fixed)

    def started(self, trial_id: int) -> Future:
        return self.transport.submit(Bookkeeping.started.__name__, trial_id)

    def reserve(self, trial_id: int, point: Suggestion, tentative: bool = False) -> Future:  # Future[bool | None]
        return self.transport.submit(Bookkeeping.reserve.__name__, trial_id, point, tentative)

    def decide(self, trial_id: int, value: float, step: int, value_se: float | None = None) -> Future:  # Future[bool]
        return self.transport.submit(Bookkeeping.decide.__name__, trial_id, value, step, value_se)

    def finish(self, trial_id: int, outcome: Outcome, failures_in_a_row: int) -> Future:
        return self.transport.submit(Bookkeeping.finish.__name__, trial_id, outcome, failures_in_a_row)

    def close_unfinished(self, trial_id: int, reason: str, requeue: bool = True) -> Future:
        return self.transport.submit(Bookkeeping.close_unfinished.__name__, trial_id, reason, requeue)

    def end(self) -> Future:
        return self.transport.submit(Bookkeeping.end.__name__)

    def interrupt(self) -> None:
        self.transport.interrupt()

    def shutdown(self) -> None:
        self.transport.shutdown()
