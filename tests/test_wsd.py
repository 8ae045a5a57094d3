"""Warmup-stable-decay and rung evaluations on a short cooldown branch (opt-in, issue 17)."""

from __future__ import annotations

import math

import pytest

from objectives.training.schedule import Schedule, cooled


def test_wsd_holds_the_peak_then_decays_1_sqrt_to_zero_at_the_last_update():
    schedule = Schedule.build(1.0, 100, 0.1, "wsd", 0.0, decay_fraction=0.2)
    assert (schedule.warmup_updates, schedule.decay_updates, schedule.decay_start) == (10, 20, 80)
    assert schedule.lr_at(0) == pytest.approx(1 / 11)  # the warmup is the other shapes'
    assert schedule.lr_at(10) == schedule.lr_at(79) == 1.0  # stable at the peak up to the decay
    assert schedule.lr_at(80) == pytest.approx(1 - math.sqrt(1 / 20))
    assert schedule.lr_at(84) == pytest.approx(1 - math.sqrt(5 / 20))  # a quarter in: half the peak
    assert schedule.lr_at(84) == pytest.approx(0.5)
    assert schedule.lr_at(99) == 0.0
    decay = [schedule.lr_at(u) for u in range(79, 100)]
    assert decay == sorted(decay, reverse=True)


def test_wsd_final_fraction_and_small_plans():
    schedule = Schedule.build(2.0, 10, 0.0, "wsd", 0.1, decay_fraction=0.2)
    assert schedule.decay_start == 8 and schedule.lr_at(9) == pytest.approx(0.2)
    tiny = Schedule.build(1.0, 3, 0.0, "wsd", 0.0, decay_fraction=0.01)
    assert tiny.decay_updates == 1 and tiny.lr_at(1) == 1.0 and tiny.lr_at(2) == 0.0  # at least one
    crowded = Schedule.build(1.0, 10, 0.9, "wsd", 0.0, decay_fraction=0.5)
    assert crowded.warmup_updates == 9 and crowded.decay_start == 9 and crowded.lr_at(9) == 0.0


def test_other_shapes_decay_over_the_whole_plan():
    assert Schedule.build(1.0, 50, 0.0, "cosine", 0.0).decay_start == 50
    assert Schedule.build(1.0, 50, 0.0, "cosine", 0.0, decay_fraction=0.2).decay_updates == 0


def test_cooled_is_1_sqrt():
    assert cooled(0.4, 0.25) == pytest.approx(0.2)
    assert cooled(0.4, 1.0) == 0.0
    assert cooled(0.4, 1.0, 0.5) == pytest.approx(0.2)
