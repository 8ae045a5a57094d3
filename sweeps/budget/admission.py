"""The bookkeeper's share of `study.total_budget`: may this worker ask for a trial, may this trial
start, and what did it cost. Runs in the bookkeeping process beside `sweeps.loop.bookkeeping`.

A trial books its planned cost when it starts (`storage.ledger.reserve`) and settles to what it
actually cost when it ends; a pruned trial hands back most of its reservation. So a worker that
finds too little left while other workers' trials are still running waits for them to settle (when
heartbeats are on, so a dead worker's trial goes stale instead of holding it up forever) before it
concludes the budget is spent. Once a worker finds it spent with nothing in flight, it notes so in
the ledger at the current amount: every worker then stops, and the sweep's ending says why.

`study_id` is the study whose ledger pays: a companion of confirmation runs books in its main
study's (sweeps/confirmation/companion.py). Such a worker never notes the budget spent: a confirmation run
that does not fit says nothing about the cheaper trials the search may still start.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from storage import ledger
from storage.optuna_private import engine_of
from storage.retry import with_retry
from sweeps.budget.spending import Pace, Spending
from sweeps.search.space import Suggestion

WAIT_S = 0.5


class BudgetBooks:
    """One worker's view of its study's ledger."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_id: int, spending: Spending,
                 wait: Callable[[float], bool] | None = None, marks_spent: bool = True):
        """`wait(seconds)`: pause (and fail stale trials) unless the sweep is stopping; False when
        it is stopping. None: never wait (heartbeats off). `marks_spent`: note a spent budget in
        the ledger, for every worker (False for a companion's)."""
        self.storage = storage
        self.engine = engine_of(storage)
        self.study_id = study_id
        self.spending = spending
        self.wait = wait
        self.marks_spent = marks_spent
        self.pace = Pace()  # seconds per budget unit, for a time total on a counting budget

    def learn_pace(self, finished: list[optuna.trial.FrozenTrial]) -> None:
        if self.spending.estimated:
            for trial in finished:
                self.pace.add(trial.user_attrs, self.spending.budget.unit)

    def left(self) -> float | None:
        return with_retry(lambda: ledger.left(self.engine, self.study_id), "reading the ledger")

    def fits(self, left: float | None, cost: float) -> bool:
        return left is None or (left > 0 and left + ledger.SLACK * self.spending.total.amount >= cost)

    def in_flight(self, mine: Container[int]) -> bool:
        """Does another trial hold a reservation and still run (its settling may give some back)?"""
        def others_running() -> bool:
            open_ids = ledger.open_trials(self.engine, self.study_id)
            return any(i not in mine and self.storage.get_trial(i).state == TrialState.RUNNING for i in open_ids)

        # the trials' states too: a worker waiting on a nearly spent total exited on a database restart here
        return with_retry(others_running, "reading the ledger")

    def spent(self, mine: Container[int], wait: bool) -> bool:
        """True when what is left holds no trial of the search; with `wait`, only once no other
        trial is in flight (then noted in the ledger, and every worker stops)."""
        while not self.fits(self.left(), self.spending.cheapest(self.pace)):
            if not wait:
                return True  # not asked ahead: the caller asks again, waiting, once its own trial ended
            if not (self.wait and self.in_flight(mine)):
                self.stop()
                return True
            if not self.wait(WAIT_S):
                return True
        return False

    def reserve(self, trial_id: int, point: Suggestion, mine: Container[int],
                tentative: bool = False) -> tuple[bool | None, float, float]:
        """(granted, left, cost): book the trial's planned cost, waiting for trials in flight to
        settle while it does not fit; not granted once nothing is in flight (noted as spent).
        `tentative`: one try, and None when it does not fit (this worker's own trial in flight,
        unsettled, may give some back: the caller settles it and asks again)."""
        cost = self.spending.planned_for(point, self.pace)
        while True:
            booked = with_retry(lambda: ledger.reserve(self.engine, self.study_id, trial_id, cost),
                                "writing the ledger")
            if booked.granted:
                return True, booked.left, cost
            if tentative:
                return None, booked.left, cost
            if not (self.wait and self.in_flight(mine)):
                self.stop()
                return False, booked.left, cost
            if not self.wait(WAIT_S):
                return False, booked.left, cost

    def settle(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        cost = self.spending.actual(attrs)
        with_retry(lambda: ledger.settle(self.engine, self.study_id, trial_id, cost), "settling the ledger")
        self.pace.add(attrs, self.spending.budget.unit)

    def stop(self) -> None:
        if not self.marks_spent:
            return
        with_retry(lambda: ledger.mark_stopped(self.engine, self.study_id), "writing the ledger")
