"""The ledger of `study.total_budget` as text: the progress line, the study note, `sweeps studies`
and the sweep's ending all say spent, left and the rate the same way."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from storage import ledger
from storage.ledger import LedgerState
from storage.optuna_private import engine_of, study_id_of, study_storage
from sweeps.errors import ConfigError
from sweeps.text import human, quantity
from sweeps.trial.record import CONFIRMS_STUDY_ATTR

RAISE_FIX = "raise study.total_budget.amount to continue"


def no_ledger(study_name: str) -> ConfigError:
    """The refusal of `study.total_budget` on a store that cannot hold its ledger (exit 2): a sweep
    never runs with its total silently ignored."""
    return ConfigError("study.total_budget", f"the store of study {study_name!r} has no SQL connection to hold "
                       "the sweep's ledger: use a postgresql+psycopg:// URL (through PgBouncer: add "
                       "?pooler=pgbouncer) or sqlite:///FILE.db, or remove study.total_budget")


def ledger_study_id(study: optuna.Study) -> int:
    """The study whose `study.total_budget` pays for this study's trials: a companion's main
    study (while it exists), any other study itself."""
    main = study.user_attrs.get(CONFIRMS_STUDY_ATTR)
    if main:
        try:
            return study_storage(study).get_study_id_from_name(main)
        except KeyError:  # the main study was deleted: nothing pays, no ledger
            pass
    return study_id_of(study)


def state_of(study: optuna.Study) -> LedgerState | None:
    """The ledger that pays for the study's trials: a companion's is its main study's."""
    engine = engine_of(study_storage(study))
    return None if engine is None else ledger.read(engine, ledger_study_id(study))


def rate_text(state: LedgerState) -> str:
    """Units per second; gpu_hours per hour (both read as "devices busy" for time units)."""
    rate = state.rate
    if rate is None:
        return "-"
    if state.unit == "gpu_hours":
        return f"{human(rate * 3600)} gpu_hours/h"
    return f"{human(rate)} {state.unit}/s"


def line_text(state: LedgerState) -> str:
    """For the progress line."""
    return (f"total budget {human(state.spent)} of {human(state.amount)} {state.unit} spent, "
            f"{human(state.left)} left, {rate_text(state)}")


def line_of(study: optuna.Study) -> Callable[[], str]:
    """A reader for the progress line: the ledger's figures now, or "" without a ledger."""

    def text() -> str:
        state = state_of(study)
        return "" if state is None else line_text(state)

    return text


def note_text(state: LedgerState) -> str:
    """For the study note (markdown)."""
    share = 100 * state.spent / state.amount
    in_flight = f", {state.open} trials reserved and running (or lost with their worker)" if state.open else ""
    return (f"**Total budget**: {human(state.spent)} of {human(state.amount)} {state.unit} spent ({share:.1f}%), "
            f"{human(state.left)} left, at {rate_text(state)}{in_flight}")


def columns(state: LedgerState | None) -> dict[str, str]:
    """For `sweeps studies`."""
    if state is None:
        return {"budget spent": "-", "left": "-", "rate": "-"}
    return {"budget spent": f"{human(state.spent)}/{human(state.amount)} {state.unit}", "left": human(state.left),
            "rate": rate_text(state)}


def spent_message(state: LedgerState | None) -> str | None:
    """The one line a sweep ends with when its total budget is spent; None while some is left."""
    if state is None or not (state.stopped or state.spent >= state.amount):
        return None
    rest = f" ({quantity(state.left)} left, less than the next trial needs)" if state.left > 0 else ""
    return f"total budget spent: {quantity(state.spent)} of {quantity(state.amount)} {state.unit}{rest}; {RAISE_FIX}"


def refused_message(left: float, cost: float, unit: str) -> str:
    """Why a trial was not started: what it needs against what is left (nothing, once the trials in
    flight overran the total)."""
    have = (f"the total budget has {quantity(left)} {unit} left" if left > 0
            else "nothing is left of the total budget")
    return f"not started: {have}, the trial needs {quantity(cost)}"


def not_started_message(not_started: int, planned: int, left: float, amount: float, unit: str, needs: float,
                        stopped: bool = False) -> str:
    """The one line `sweeps confirm` ends with when the total budget cannot hold all its runs."""
    if stopped:
        rest = f"the sweep found it spent with {quantity(left)} of {quantity(amount)} {unit} left"
    elif left <= 0:
        rest = f"nothing left of {quantity(amount)} {unit}, the next run needs {quantity(needs)}"
    else:
        rest = f"{quantity(left)} of {quantity(amount)} {unit} left, the next run needs {quantity(needs)}"
    return f"total budget: {not_started} of {planned} confirmation runs not started ({rest}); {RAISE_FIX}"
