"""The last slots of a study: whether a worker may ask its next trial ahead, while its current one
trains (`Books.ask`; `benchmarks/scaling.py`'s worker asks by the same rule). No torch here."""

from __future__ import annotations


def others_wanting_a_slot(running: int, training: int, open_here: int, training_here: int) -> int:
    """How many other workers will want a trial when their current one ends: those training a trial
    with none asked ahead behind it. `running`: the study's running trials, `training` of them
    marked started (`sweeps.trial.record.STARTED_KEY`); `open_here`: this worker's open trials,
    `training_here` of them started. Each trial asked ahead waits behind one its worker trains, so
    the others' trials in training less their trials asked ahead."""
    others_training = training - training_here
    others_ahead = (running - training) - (open_here - training_here)
    return others_training - others_ahead
