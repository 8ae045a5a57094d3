"""What a search method's run records: each trial's training examples and its evaluations."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass
class Evaluation:
    examples: int  # training examples into the trial when this value was measured
    value: float
    seconds: float  # wall seconds since the method's sweep started
    # issue 30: evaluations the trial had made when this value was known (its own included); None:
    # this is its j-th evaluation (the service's horizons make more than they report: their runs')
    made: int | None = None


@dataclass
class TrialRecord:
    examples: int  # training examples the trial processed in all
    evaluations: list[Evaluation]
    # issue 30: what the trial ran (its searched values, its training seed, its length) and when
    # (seconds since the method's sweep started); None in the older runs
    params: dict | None = None
    started: float | None = None
    ended: float | None = None
    evaluations_made: int | None = None  # every evaluation the trial made (None: len(evaluations))


Run = tuple[list[TrialRecord], float]  # one method's run on one task and seed: its trials, in order, and wall seconds


def charged(records: list[TrialRecord], per_evaluation: float) -> list[TrialRecord]:
    """The records with evaluation charged as compute (issue 30): each evaluation costs
    `per_evaluation` training-example equivalents, paid when it is made. A trial's j-th evaluation
    (in example order) moves to its examples + j x the charge (its own included: a value is known
    only once measured), and the trial's total grows by its evaluations' count x the charge."""
    if not per_evaluation:
        return records
    out = []
    for record in records:
        evals = sorted(record.evaluations, key=lambda e: e.examples)
        moved = [Evaluation(e.examples + (e.made or j) * per_evaluation, e.value, e.seconds, e.made)
                 for j, e in enumerate(evals, 1)]
        made = record.evaluations_made if record.evaluations_made is not None else len(evals)
        out.append(replace(record, examples=record.examples + made * per_evaluation, evaluations=moved))
    return out
