"""The companion study of `sweeps confirm`: the best configurations of a study trained again with
fresh seeds, as ordinary trials of a study of their own in the same store.

Optuna's samplers read every trial of a study, so confirmation runs kept among the search's
would steer it; in `<name>-confirm` they do not, and the dashboard lists them like any study.
Each run is queued with the source trial's parameters (`study.enqueue_trial`) and its
`CONFIRM` attributes (sweeps/trial/record.py): which trial it confirms and the seed it trains
with. Workers pull the queue through the ordinary sweep loop (`sweeps.loop.bookkeeping` trains
nothing else in a study that carries `CONFIRMS_STUDY_ATTR`), so a run records its cost
(examples, updates, train_seconds) like any trial.

The runs count against the main study's `study.total_budget`: a companion keeps no ledger of its
own, its trials reserve and settle in the main study's (`ledger_study_id`), so every figure of
that ledger (progress line, study note, `sweeps studies`) includes them. `split_by_budget` decides
before anything is queued which runs what is left still holds; the reservation each run makes
when it starts stays the guard against other workers spending meanwhile. Nothing here imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from storage.ledger import SLACK, LedgerState
from sweeps.budget.spending import Pace, Spending
from sweeps.config.study_file import SweepConfig, parse_config
from sweeps.config.target import SweepTarget
from sweeps.search.space import Suggestion, suggest
from sweeps.trial.record import (
    CONFIRM_STUDY_ATTR,
    CONFIRMS_STUDY_ATTR,
    TrialRecord,
    companion_name,
    confirm_attrs,
    predict_attrs,
)

LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def confirmation_seed(study_seed: int, source_trial: int, replicate: int) -> int:
    """The training seed of run `replicate` (0, 1, ...) of a source trial: deterministic, so every
    machine queues the same runs, and fresh: `trial_seed` (sweeps/trial/run_one.py) with the study
    seed moved `replicate + 1` on, which equals no search trial's seed of the study unless trial
    numbers lie 100 million apart."""
    return ((study_seed + replicate + 1) * 1_000_003 + source_trial * 7_919 + 1) % (2**31 - 1)


@dataclass(frozen=True)
class Confirmation:
    """One run to queue: a source trial's parameters with one fresh seed; or, for `sweeps predict
    --verify`, one arm of the prediction (`arm`, trained at `budget`) with one seed."""

    source_trial: int | None
    seed: int
    params: dict[str, Any]
    arm: str | None = None
    budget: float | None = None

    @property
    def key(self) -> tuple[int | str, int]:
        return (self.arm if self.arm is not None else self.source_trial), self.seed

    def attrs(self) -> dict[str, Any]:
        if self.arm is not None:
            return predict_attrs(self.arm, self.budget, self.seed)
        return confirm_attrs(self.source_trial, self.seed)


def planned(sources: Iterable[FrozenTrial], seeds: int, study_seed: int) -> list[Confirmation]:
    """`seeds` runs of each source trial, in the sources' order."""
    return [Confirmation(t.number, confirmation_seed(study_seed, t.number, r), dict(t.params))
            for t in sources for r in range(seeds)]


def key_of(attrs: Mapping[str, Any]) -> tuple[int | str, int] | None:
    """(source trial, seed) of a trial queued as a confirmation run, (arm, seed) of a prediction's
    run; None for any other trial."""
    record = TrialRecord.from_attrs(attrs)
    if record.confirm_seed is None:
        return None
    if record.predicts_arm is not None:
        return record.predicts_arm, record.confirm_seed
    if record.confirms_trial is None:
        return None
    return record.confirms_trial, record.confirm_seed


def companion_config(config: SweepConfig, study_name: str, n_trials: int,
                     ledger: LedgerState | None = None) -> SweepConfig:
    """The main study's config with the search switched off: its name, the runs to make, a
    random sampler (the queue supplies every point) and no pruner (a confirmation trains to its
    budget, as the configuration would in use). Training settings are untouched. Its
    `total_budget` is the main study's ledger as it stands (`ledger`: amount and unit; none
    without one), not the stored config's, which a later `sweeps run` may have raised."""
    data = json.loads(json.dumps(config.to_dict(), default=str))
    data["study"].update(name=companion_name(study_name), n_trials=max(1, n_trials),
                         total_budget=None if ledger is None else {"amount": ledger.amount, "unit": ledger.unit})
    data["sampler"] = {"name": "random"}
    data["pruner"] = {"name": "none"}
    return parse_config(data, config.base_dir)


def companion_target(main: SweepTarget, n_trials: int, kind: str = "confirm") -> SweepTarget:
    """`confirms` links the companion to its main study as it is opened, before its ledger would be."""
    return SweepTarget(main.storage_url, companion_name(main.study_name, kind), max(1, n_trials),
                       confirms=main.study_name)



def link(main: optuna.Study, companion: optuna.Study, attr: str = CONFIRM_STUDY_ATTR) -> None:
    """Each study names the other (`attr`: the main study's name for it, CONFIRM_STUDY_ATTR or
    PREDICT_STUDY_ATTR); the companion's attribute also makes workers train only its queue."""
    if main.user_attrs.get(attr) != companion.study_name:
        main.set_user_attr(attr, companion.study_name)
    if companion.user_attrs.get(CONFIRMS_STUDY_ATTR) != main.study_name:
        companion.set_user_attr(CONFIRMS_STUDY_ATTR, main.study_name)


def runs_to_make(companion: optuna.Study, plan: list[Confirmation]) -> tuple[int, list[Confirmation]]:
    """The trials the companion already finished, and the planned runs none has finished yet
    (queued, running or not there): together, the trial count a run of the companion aims for."""
    done = {key_of(t.user_attrs) for t in companion.get_trials(deepcopy=False, states=FINISHED)}
    finished = len(companion.get_trials(deepcopy=False, states=FINISHED))
    return finished, [c for c in plan if c.key not in done]


def queue_missing(companion: optuna.Study, plan: list[Confirmation]) -> list[Confirmation]:
    """Queue each planned run that no trial holds (queued, running or finished): a rerun resumes,
    and a run whose trial failed is queued again. Returns what it queued. Two machines starting
    at once may both queue a run; the worker that pops the second copy closes it unrun
    (`why_not_run`)."""
    live = {key_of(t.user_attrs) for t in companion.get_trials(deepcopy=False, states=LIVE)}
    missing = [c for c in plan if c.key not in live]
    for run in missing:
        companion.enqueue_trial(run.params, user_attrs=run.attrs())
    return missing


def why_not_run(number: int, attrs: Mapping[str, Any], trials: Iterable[FrozenTrial]) -> str | None:
    """Why a trial just asked in a companion study must not train, or None when it should: not
    queued (the sampler's own point), or its run already finished, or running in a lower-numbered
    trial (two machines queued it at once)."""
    key = key_of(attrs)
    if key is None:
        return "not started: a companion study trains only the runs `sweeps confirm` or `sweeps predict` queued"
    for other in trials:
        if other.number == number or key_of(other.user_attrs) != key:
            continue
        if other.state in FINISHED or (other.state == TrialState.RUNNING and other.number < number):
            return f"not started: trial {other.number} already runs this confirmation"
    return None


@dataclass(frozen=True)
class BudgetCheck:
    """The planned runs the main study's total budget holds (`allowed`), and those it does not."""

    allowed: list[Confirmation]
    left_out: list[Confirmation]
    left: float  # what the ledger had left before these runs
    amount: float
    unit: str
    needs: float = 0.0  # the planned cost of the first run left out
    stopped: bool = False  # a worker found the budget spent: nothing starts until the amount is raised


def point_of(run: Confirmation, config: SweepConfig) -> Suggestion:
    """What the run will train: its parameters read as the sweep loop reads them."""
    return suggest(optuna.trial.FixedTrial(run.params), config.search)


def split_by_budget(plan: list[Confirmation], companion: optuna.Study | None, config: SweepConfig,
                    spending: Spending, ledger: LedgerState, pace: Pace | None = None) -> BudgetCheck:
    """Split the plan against what the ledger has left (nothing once a worker found it spent).
    A run finished or running already is kept at no cost (its cost is booked). The others take
    their planned cost (`Spending.planned`, as their reservation will) in the plan's order, best
    configuration first, until one does not fit: that run and every later one not already booked
    are left out, so what the budget holds goes to the best configurations."""
    booked = set() if companion is None else {
        key_of(t.user_attrs) for t in companion.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))}
    remaining, allowed, left_out, needs = 0.0 if ledger.stopped else ledger.left, [], [], 0.0
    for run in plan:
        if run.key in booked:
            allowed.append(run)
            continue
        cost = spending.planned_for(point_of(run, config), pace)
        if not left_out and cost <= remaining + SLACK * ledger.amount:
            remaining -= cost
            allowed.append(run)
            continue
        if not left_out:
            needs = cost
        left_out.append(run)
    return BudgetCheck(allowed, left_out, ledger.left, ledger.amount, ledger.unit, needs, ledger.stopped)
