"""What a search method's run records: each trial's training examples and its evaluations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Evaluation:
    examples: int  # training examples into the trial when this value was measured
    value: float
    seconds: float  # wall seconds since the method's sweep started


@dataclass
class TrialRecord:
    examples: int  # training examples the trial processed in all
    evaluations: list[Evaluation]


Run = tuple[list[TrialRecord], float]  # one method's run on one task and seed: its trials, in order, and wall seconds
