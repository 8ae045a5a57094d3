"""The LR range test's share of `study.total_budget` (`search.lr_range_test`, sweeps/search/prior.py).

The tests train before the first trial, on the study's compute: the ledger books them once, as a
settled row of their own (`storage.ledger.RANGE_TEST_ID`), so the trials start with what is left
after them, and `sweeps studies` and the progress line count them as spent. Their cost is what they
planned: every test's updates at its batch size (a test that stops at a diverging loss is charged
in full), in the total's unit (examples, updates, epochs of the training set, tokens, or their wall
time under a time total). A total that cannot hold that cost is refused before any test trains.
"""

from __future__ import annotations

import optuna

from objectives.training.units.registry import unit_named
from storage import ledger
from storage.optuna_private import engine_of, study_id_of, study_storage
from storage.retry import with_retry
from sweeps.budget.spending import cost_in
from sweeps.config.study_file import TIME_UNITS, SweepConfig, TotalBudgetSection
from sweeps.errors import ConfigError
from sweeps.search.prior import MeasuredPrior
from sweeps.trial.record import CONFIRMS_STUDY_ATTR


def consumed_by(prior: MeasuredPrior) -> dict[str, float]:
    """The tests' cost as a trial's record counts its own (the attributes each budget unit reads)."""
    attrs = {unit_named("examples").consumed_attr: float(prior.examples),
             unit_named("updates").consumed_attr: float(prior.updates * len(prior.batch_sizes)),
             unit_named("seconds").consumed_attr: float(prior.seconds)}
    if prior.n_train:
        attrs[unit_named("epochs").consumed_attr] = prior.examples / prior.n_train
    if prior.tokens_per_example:
        attrs[unit_named("tokens").consumed_attr] = float(prior.examples * prior.tokens_per_example)
    return attrs


class LedgerPriorBooks:
    """`PriorBooks` on the study's ledger."""

    def __init__(self, engine, study_id: int, total: TotalBudgetSection):
        self.engine, self.study_id, self.total = engine, study_id, total
        self.started = ledger.now()

    def cost(self, prior: MeasuredPrior) -> float:
        return cost_in(self.total.unit, consumed_by(prior))

    def check(self, planned: MeasuredPrior) -> None:
        self.started = ledger.now()
        if self.total.unit in TIME_UNITS:
            return  # its time is known once it ran
        cost = self.cost(planned)
        left = with_retry(lambda: ledger.left(self.engine, self.study_id), "reading the ledger")
        if left is not None and cost > left + ledger.SLACK * self.total.amount:
            raise ConfigError("search.lr_range_test",
                              f"its tests cost {cost:g} {self.total.unit}, more than the {max(left, 0.0):g} left of "
                              f"study.total_budget: lower budget_fraction, or raise the total")

    def book(self, prior: MeasuredPrior) -> None:
        cost = self.cost(prior)
        with_retry(lambda: ledger.book_spent(self.engine, self.study_id, ledger.RANGE_TEST_ID, cost,
                                             self.started), "writing the ledger")


def prior_books(study: optuna.Study, config: SweepConfig) -> LedgerPriorBooks | None:
    """The ledger a prior measured for this study books in; None without a total budget (or for a
    companion of confirmation runs, which measures none)."""
    total = config.study.total_budget
    if total is None or config.search.lr_range_test is None or CONFIRMS_STUDY_ATTR in study.user_attrs:
        return None
    engine = engine_of(study_storage(study))
    if engine is None:
        return None
    return LedgerPriorBooks(engine, study_id_of(study), total)
