"""What the confirmation runs say: each confirmed configuration's search-time value beside the
mean and spread of its fresh-seed runs, and whether they rank the configurations as the search did.

The search's best value is the best of many noisy draws, so it overstates what its configuration
gives; `overstated` is by how much (search value minus confirmed mean, sign-flipped when
minimizing: positive means the search was optimistic). Read from the stores alone (no torch):
`sweeps confirm` prints it, and `sweeps report` shows it when the study has a companion.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from storage.optuna_private import study_storage
from sweeps.confirmation.companion import key_of
from sweeps.text import table
from sweeps.trial.record import CONFIRM_STUDY_ATTR


class SeedRuns:
    """The mean and the sample SD of `values`: one configuration's runs with fresh seeds (confirmation
    runs, or `sweeps predict --verify`'s arms)."""

    values: list[float]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        """The sample standard deviation; None with fewer than two runs."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


@dataclass
class Confirmed(SeedRuns):
    """One configuration of the search (its trial) and its confirmation runs."""

    trial: int
    search_value: float
    maximize: bool
    values: list[float] = field(default_factory=list)  # the finished runs with a value, by seed
    seeds: list[int] = field(default_factory=list)
    diverged: int = 0  # runs that finished without a value (loss NaN/inf)

    @property
    def overstated(self) -> float | None:
        if self.mean is None:
            return None
        return self.search_value - self.mean if self.maximize else self.mean - self.search_value

    def row(self) -> dict:
        return {"trial": self.trial, "search": self.search_value, "confirmed_mean": self.mean, "sd": self.sd,
                "runs": len(self.values), "overstated_by": self.overstated}


def companion_of(study: optuna.Study, attr: str = CONFIRM_STUDY_ATTR) -> optuna.Study | None:
    """The study's companion named by `attr` (CONFIRM_STUDY_ATTR: its confirmation runs;
    PREDICT_STUDY_ATTR: `sweeps predict --verify`'s), in the same store; None when it has none."""
    name = study.user_attrs.get(attr)
    if not name:
        return None
    try:
        return optuna.load_study(study_name=name, storage=study_storage(study))
    except KeyError:  # linked, then deleted
        return None


def confirmed(study: optuna.Study, companion: optuna.Study, sources: list[int] | None = None) -> list[Confirmed]:
    """Each source trial's confirmation runs (`sources`: trial numbers, in the search's order;
    default: every trial the companion confirms, best search value first). A run made twice
    (two machines queued it at once) counts once."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    by_trial: dict[int, Confirmed] = {}
    main = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    seen: set[tuple[int, int]] = set()
    runs = companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    for run in sorted(runs, key=lambda t: t.number):
        key = key_of(run.user_attrs)
        if key is None or key in seen or key[0] not in main:
            continue
        seen.add(key)
        entry = by_trial.setdefault(key[0], Confirmed(key[0], main[key[0]].value, maximize))
        if run.state == TrialState.COMPLETE and run.value is not None and math.isfinite(run.value):
            entry.values.append(run.value)
            entry.seeds.append(key[1])
        else:
            entry.diverged += 1
    if sources is None:
        sources = sorted(by_trial, key=lambda n: (-main[n].value if maximize else main[n].value, n))
    return [by_trial.get(n) or Confirmed(n, main[n].value, maximize) for n in sources if n in main]


def confirmed_of(study: optuna.Study) -> list[Confirmed]:
    """Every configuration the study's companion confirms (best search value first); none without one."""
    companion = companion_of(study)
    return confirmed(study, companion) if companion is not None else []


def ranking_note(rows: list[Confirmed]) -> str:
    """Whether the confirmed means order the configurations as the search values did."""
    rated = [r for r in rows if r.mean is not None]
    if len(rated) < 2:
        return "ranking: fewer than two configurations with confirmed runs, nothing to compare"
    sign = -1 if rated[0].maximize else 1
    search = [r.trial for r in sorted(rated, key=lambda r: (sign * r.search_value, r.trial))]
    confirmed_order = [r.trial for r in sorted(rated, key=lambda r: (sign * r.mean, r.trial))]
    means = {r.trial: r.mean for r in rated}
    tied = [f"{a} and {b}" for a, b in zip(confirmed_order, confirmed_order[1:]) if means[a] == means[b]]
    ties = f"; trials {', '.join(tied)} tie" if tied else ""
    if search == confirmed_order:
        return f"ranking: the confirmed means rank the trials as the search did (best first: {order(search)}{ties})"
    return (f"ranking: the confirmed means rank the trials differently from the search (best first: "
            f"{order(confirmed_order)}; the search: {order(search)}{ties}): trial {confirmed_order[0]} is the "
            "confirmed best")


def order(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def runs_text(rows: list[Confirmed]) -> str:
    """How many finished runs stand behind the table (a diverged run has no value to average)."""
    runs = sum(len(r.values) + r.diverged for r in rows)
    diverged = sum(r.diverged for r in rows)
    counted = f"{runs} run" + ("" if runs == 1 else "s")
    return counted + (f", {diverged} diverged (loss NaN/inf, no value)" if diverged else "")


def report_lines(study: optuna.Study) -> list[str]:
    """The report's block: the confirmed values beside the search-time ones; none without runs."""
    companion = companion_of(study)
    rows = [r for r in confirmed(study, companion) if r.values or r.diverged] if companion else []
    if not rows:
        return []
    return [f"confirmed with fresh seeds ({runs_text(rows)} in study {companion.study_name}):",
            table([r.row() for r in rows]), ranking_note(rows)]
