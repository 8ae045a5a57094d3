"""The companion study of `sweeps confirm`: the best configurations of a study trained again with
fresh seeds, as ordinary trials of a study of their own in the same store.

Optuna's samplers read every trial of a study, so confirmation runs kept among the search's
would steer it; in `<name>-confirm` they do not, and the dashboard lists them like any study.
Each run is queued with the source trial's parameters (`study.enqueue_trial`) and its
`CONFIRM` attributes (sweeps/trial/record.py): which trial it confirms and the seed it trains
with. Workers pull the queue through the ordinary sweep loop (`sweeps.loop.books` trains
nothing else in a study that carries `CONFIRMS_STUDY_ATTR`), so a run records its cost
(examples, updates, train_seconds) like any trial. Nothing here imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeps.config.study_file import SweepConfig, parse_config
from sweeps.config.target import SweepTarget
from sweeps.trial.record import (
    CONFIRM_STUDY_ATTR,
    CONFIRMS_STUDY_ATTR,
    TrialRecord,
    companion_name,
    confirm_attrs,
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
    """One run to queue: a source trial's parameters with one fresh seed."""

    source_trial: int
    seed: int
    params: dict[str, Any]

    @property
    def key(self) -> tuple[int, int]:
        return self.source_trial, self.seed


def planned(sources: Iterable[FrozenTrial], seeds: int, study_seed: int) -> list[Confirmation]:
    """`seeds` runs of each source trial, in the sources' order."""
    return [Confirmation(t.number, confirmation_seed(study_seed, t.number, r), dict(t.params))
            for t in sources for r in range(seeds)]


def key_of(attrs: Mapping[str, Any]) -> tuple[int, int] | None:
    """(source trial, seed) of a trial queued as a confirmation run; None for any other trial."""
    record = TrialRecord.from_attrs(attrs)
    if record.confirms_trial is None or record.confirm_seed is None:
        return None
    return record.confirms_trial, record.confirm_seed


def companion_config(config: SweepConfig, study_name: str, n_trials: int) -> SweepConfig:
    """The main study's config with the search switched off: its name, the runs to make, a
    random sampler (the queue supplies every point) and no pruner (a confirmation trains to its
    budget, as the configuration would in use). Training settings are untouched."""
    data = json.loads(json.dumps(config.to_dict(), default=str))
    data["study"].update(name=companion_name(study_name), n_trials=max(1, n_trials))
    data["sampler"] = {"name": "random"}
    data["pruner"] = {"name": "none"}
    return parse_config(data, config.base_dir)


def companion_target(main: SweepTarget, n_trials: int) -> SweepTarget:
    return SweepTarget(main.storage_url, companion_name(main.study_name), max(1, n_trials))


def link(main: optuna.Study, companion: optuna.Study) -> None:
    """Each study names the other; the companion's attribute also makes workers train only its queue."""
    if main.user_attrs.get(CONFIRM_STUDY_ATTR) != companion.study_name:
        main.set_user_attr(CONFIRM_STUDY_ATTR, companion.study_name)
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
        companion.enqueue_trial(run.params, user_attrs=confirm_attrs(run.source_trial, run.seed))
    return missing


def why_not_run(number: int, attrs: Mapping[str, Any], trials: Iterable[FrozenTrial]) -> str | None:
    """Why a trial just asked in a companion study must not train, or None when it should: not
    queued (the sampler's own point), or its run already finished, or running in a lower-numbered
    trial (two machines queued it at once)."""
    key = key_of(attrs)
    if key is None:
        return "not started: a confirmation study trains only the runs `sweeps confirm` queued"
    for other in trials:
        if other.number == number or key_of(other.user_attrs) != key:
            continue
        if other.state in FINISHED or (other.state == TrialState.RUNNING and other.number < number):
            return f"not started: trial {other.number} already runs this confirmation"
    return None
