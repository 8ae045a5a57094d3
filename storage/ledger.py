"""The compute ledger of a study: what the whole sweep may spend (`study.total_budget`), and what
each trial reserved when it started and spent when it ended, shared by every worker on every
machine through the study's store.

Two small tables beside Optuna's (as `sweeps_workers`): `sweeps_budgets`, one row per study (the
total, its unit, and the row every reservation locks), and `sweeps_ledger`, one row per trial that
started. A reservation is one transaction that first takes a lock (PostgreSQL: the study's budget
row, SELECT ... FOR UPDATE; SQLite: BEGIN IMMEDIATE, the database's write lock), then sums what is
spent and books the trial only if it fits, so two workers can never both take the last of it.
What a study has spent is every settled trial's actual cost plus every open reservation: a trial
whose worker died is never settled, so its reservation stays spent ("its compute counts").

Any caller (the sweep loop, `sweeps confirm`) books against a study by its id: `reserve` before a
trial trains, `settle` once it ended, `read` to show the figures. Nothing here knows what a unit
means; callers pass costs already in the budget's unit.
"""

from __future__ import annotations

import datetime
import random
import time
from dataclasses import dataclass

import sqlalchemy
from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError

META = MetaData()
BUDGETS = Table(
    "sweeps_budgets", META,
    Column("study_id", Integer, primary_key=True, autoincrement=False),
    Column("study_name", String(512)),  # an id SQLite hands out again after a study was deleted is a new ledger
    Column("amount", Float, nullable=False),
    Column("unit", String(32), nullable=False),
    Column("stopped_at", Float),  # the amount at which a worker last found the budget spent; None: not spent
)
LEDGER = Table(
    "sweeps_ledger", META,
    Column("study_id", Integer, primary_key=True, autoincrement=False),  # the study whose budget pays
    Column("trial_id", Integer, primary_key=True, autoincrement=False),  # any trial in the store (companions too)
    Column("reserved", Float, nullable=False),  # the planned cost, booked when the trial started
    Column("spent", Float),  # the actual cost, once the trial ended; None while it runs (or after its worker died)
    Column("reserved_at", DateTime, nullable=False),
    Column("settled_at", DateTime),
)
ATTEMPTS = 50
RANGE_TEST_ID = -1  # the row of the study's LR range test (search.lr_range_test): no trial has a negative id
SLACK = 1e-9  # relative: a trial that exactly fills the budget fits despite float sums


class LedgerUnitError(ValueError):
    """The study's ledger already counts another unit; its figures cannot be converted."""


@dataclass(frozen=True)
class LedgerState:
    """A study's ledger as read at one moment."""

    amount: float
    unit: str
    spent: float  # settled costs plus open reservations
    open: int  # trials reserved and not settled: running, or lost with their worker
    settled: float  # the settled trials' costs
    busy_seconds: float  # wall time during which at least one settled trial was running
    stopped: bool  # a worker found the budget spent at this amount

    @property
    def left(self) -> float:
        return max(0.0, self.amount - self.spent)

    @property
    def rate(self) -> float | None:
        """Units spent per second of wall time across all workers (None before a trial settled)."""
        return self.settled / self.busy_seconds if self.busy_seconds > 0 else None


@dataclass(frozen=True)
class Reservation:
    granted: bool
    left: float  # what was left before this trial


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def create_tables(engine: sqlalchemy.engine.Engine) -> None:
    """Create both tables if missing; workers that race to create them retry."""
    for attempt in range(ATTEMPTS):
        try:
            with engine.begin() as connection:
                META.create_all(connection, checkfirst=True)
            return
        except (IntegrityError, ProgrammingError, OperationalError):
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.01, 0.1))


def set_total(engine: sqlalchemy.engine.Engine, study_id: int, study_name: str, amount: float, unit: str) -> None:
    """Record the study's total (each run may raise or lower it); LedgerUnitError when its ledger
    already counts another unit."""
    create_tables(engine)
    for attempt in range(ATTEMPTS):
        try:
            with engine.begin() as connection:
                row = connection.execute(select(BUDGETS).where(BUDGETS.c.study_id == study_id)).first()
                if row is not None and row.study_name != study_name:  # a deleted study's id, reused
                    connection.execute(delete(LEDGER).where(LEDGER.c.study_id == study_id))
                    connection.execute(delete(BUDGETS).where(BUDGETS.c.study_id == study_id))
                    row = None
                if row is None:
                    connection.execute(insert(BUDGETS).values(study_id=study_id, study_name=study_name,
                                                              amount=amount, unit=unit))
                    return
                if row.unit != unit and spent_in(connection, study_id) > 0:
                    raise LedgerUnitError(f"study {study_name!r} has spent its budget in {row.unit}, not {unit}")
                connection.execute(update(BUDGETS).where(BUDGETS.c.study_id == study_id)
                                   .values(amount=amount, unit=unit))
            return
        except IntegrityError:  # another worker inserted the row first: update it instead
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.01, 0.1))


def spent_in(connection: sqlalchemy.engine.Connection, study_id: int) -> float:
    total = func.coalesce(func.sum(func.coalesce(LEDGER.c.spent, LEDGER.c.reserved)), 0.0)
    return float(connection.execute(select(total).where(LEDGER.c.study_id == study_id)).scalar_one())


def locked(connection: sqlalchemy.engine.Connection, study_id: int):
    """The study's budget row, locked until the transaction ends (SQLite: the whole database)."""
    query = select(BUDGETS).where(BUDGETS.c.study_id == study_id)
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        query = query.with_for_update()
    return connection.execute(query).first()


# PostgreSQL: what is spent, whether the trial is booked, and the booking if it fits, in one statement run
# once the budget row is locked (a statement of its own: in READ COMMITTED each statement sees what was
# committed before it started, so this one sees every booking made before the lock was granted)
BOOK_IF_IT_FITS = sqlalchemy.text("""
WITH ledger AS (
    SELECT coalesce(sum(coalesce(spent, reserved)), 0.0) AS spent,
           count(*) FILTER (WHERE trial_id = :trial_id) AS booked
    FROM sweeps_ledger WHERE study_id = :study_id
), booking AS (
    INSERT INTO sweeps_ledger (study_id, trial_id, reserved, reserved_at)
    SELECT :study_id, :trial_id, :cost, :now FROM ledger
    WHERE ledger.booked = 0 AND :cost <= :amount - ledger.spent + :slack
    RETURNING trial_id
)
SELECT ledger.spent, ledger.booked, (SELECT count(*) FROM booking) AS inserted FROM ledger
""")


def reserve(engine: sqlalchemy.engine.Engine, study_id: int, trial_id: int, cost: float) -> Reservation:
    """Book `cost` for the trial if what is left holds it, in one transaction; a trial booked
    already (a retried call) keeps its booking."""
    with engine.connect() as connection:
        try:
            budget = locked(connection, study_id)
            if budget is None:
                raise LookupError(f"study {study_id} has no total budget recorded")
            if connection.dialect.name == "postgresql":  # two statements under the lock, not four
                spent, booked, inserted = connection.execute(BOOK_IF_IT_FITS, {
                    "study_id": study_id, "trial_id": trial_id, "cost": float(cost), "now": now(),
                    "amount": float(budget.amount), "slack": SLACK * budget.amount}).one()
                left = budget.amount - float(spent)
                if inserted:
                    connection.commit()
                else:
                    connection.rollback()
                return Reservation(bool(booked or inserted), left)
            left = budget.amount - spent_in(connection, study_id)
            booked = connection.execute(select(LEDGER.c.trial_id).where(
                LEDGER.c.study_id == study_id, LEDGER.c.trial_id == trial_id)).first()
            if booked is not None:
                connection.rollback()
                return Reservation(True, left)
            if cost > left + SLACK * budget.amount:
                connection.rollback()
                return Reservation(False, left)
            connection.execute(insert(LEDGER).values(study_id=study_id, trial_id=trial_id, reserved=float(cost),
                                                     reserved_at=now()))
            connection.commit()
            return Reservation(True, left)
        except BaseException:
            connection.rollback()
            raise


def settle(engine: sqlalchemy.engine.Engine, study_id: int, trial_id: int, cost: float) -> None:
    """Replace the trial's reservation by what it actually cost."""
    with engine.begin() as connection:
        connection.execute(update(LEDGER).where(LEDGER.c.study_id == study_id, LEDGER.c.trial_id == trial_id)
                           .values(spent=float(cost), settled_at=now()))


def book_spent(engine: sqlalchemy.engine.Engine, study_id: int, trial_id: int, cost: float,
               started: datetime.datetime) -> bool:
    """Book compute already spent outside a trial (the LR range test, `RANGE_TEST_ID`) as a settled
    row: reserved and spent alike, from `started` to now. False when that row exists (booked once)."""
    try:
        with engine.begin() as connection:
            connection.execute(insert(LEDGER).values(study_id=study_id, trial_id=trial_id, reserved=float(cost),
                                                     spent=float(cost), reserved_at=started, settled_at=now()))
        return True
    except IntegrityError:
        return False


def mark_stopped(engine: sqlalchemy.engine.Engine, study_id: int) -> None:
    """Note that a worker stopped because the budget was spent, at the current amount (raising the
    amount clears it)."""
    with engine.begin() as connection:
        connection.execute(update(BUDGETS).where(BUDGETS.c.study_id == study_id)
                           .values(stopped_at=BUDGETS.c.amount))


def left(engine: sqlalchemy.engine.Engine, study_id: int) -> float | None:
    """What is left of the study's total to start trials with (small queries: asked before every
    trial): 0 once a worker found it spent at this amount; None without a total."""
    with engine.connect() as connection:
        budget = connection.execute(select(BUDGETS.c.amount, BUDGETS.c.stopped_at)
                                    .where(BUDGETS.c.study_id == study_id)).first()
        if budget is None:
            return None
        if budget.stopped_at is not None and budget.stopped_at == budget.amount:
            return 0.0
        return float(budget.amount) - spent_in(connection, study_id)


def open_trials(engine: sqlalchemy.engine.Engine, study_id: int) -> list[int]:
    """The trials holding a reservation not yet settled: running, or lost with their worker."""
    with engine.connect() as connection:
        return list(connection.execute(select(LEDGER.c.trial_id).where(
            LEDGER.c.study_id == study_id, LEDGER.c.spent.is_(None))).scalars())


def read(engine: sqlalchemy.engine.Engine, study_id: int) -> LedgerState | None:
    """The study's ledger, or None when it has none (no total budget, or a store without the tables)."""
    try:
        with engine.connect() as connection:
            budget = connection.execute(select(BUDGETS).where(BUDGETS.c.study_id == study_id)).first()
            if budget is None:
                return None
            rows = connection.execute(select(LEDGER.c.reserved, LEDGER.c.spent, LEDGER.c.reserved_at,
                                             LEDGER.c.settled_at).where(LEDGER.c.study_id == study_id)).all()
    except (OperationalError, ProgrammingError) as err:
        if is_missing_table(err):
            return None
        raise
    settled = [r for r in rows if r.spent is not None]
    return LedgerState(
        amount=float(budget.amount), unit=budget.unit,
        spent=sum(r.reserved if r.spent is None else r.spent for r in rows),
        open=len(rows) - len(settled), settled=sum(r.spent for r in settled),
        busy_seconds=busy_seconds([(r.reserved_at, r.settled_at) for r in settled if r.settled_at]),
        stopped=budget.stopped_at is not None and budget.stopped_at == budget.amount,
    )


def busy_seconds(spans: list[tuple[datetime.datetime, datetime.datetime]]) -> float:
    """Seconds covered by the union of the spans: pauses between runs do not dilute the rate."""
    total, end = 0.0, None
    for start, stop in sorted(spans):
        if end is None or start > end:
            total += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds()
            end = stop
    return total


def is_missing_table(err: DBAPIError) -> bool:
    text = str(err.orig).lower()
    return "no such table" in text or "does not exist" in text
