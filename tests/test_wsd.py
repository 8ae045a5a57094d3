"""Warmup-stable-decay and rung evaluations on a short cooldown branch (opt-in, issue 17)."""

from __future__ import annotations

import math

import pytest

from objectives.training.schedule import Schedule, cooled
from sweeps.config.fingerprint import fingerprint_of
from sweeps.config.schema import ConfigError
from sweeps.config.study_file import parse_config
from tests.conftest import TINY, merged


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


# --- the study file --------------------------------------------------------------------------------


SECONDS = {"unit": "seconds", "per_trial": 5, "eval_every": 1}


def parsed(schedule: dict, **more):
    return parse_config(merged(TINY, {"schedule": schedule, **more}))


def test_defaults_are_off_and_wsd_fills_its_own():
    plain = parsed({})
    assert (plain.schedule.name, plain.schedule.decay_fraction, plain.schedule.cooldown_evaluations,
            plain.schedule.cooldown_fraction) == ("cosine", None, False, None)
    wsd = parsed({"name": "wsd", "cooldown_evaluations": True})
    assert (wsd.schedule.decay_fraction, wsd.schedule.cooldown_fraction) == (0.2, 0.1)


def test_the_off_keys_stay_out_of_the_fingerprint():
    """A study fingerprinted before these keys existed resumes with a file that leaves them out."""
    plain = fingerprint_of(parsed({}))
    assert not [key for key in plain if key.split(".")[-1] in ("decay_fraction", "cooldown_evaluations",
                                                                 "cooldown_fraction")]
    on = fingerprint_of(parsed({"name": "wsd", "cooldown_evaluations": True}))
    assert on["schedule.decay_fraction"] == 0.2 and on["schedule.cooldown_evaluations"] is True


@pytest.mark.parametrize(
    ("schedule", "more", "path", "words"),
    [
        ({"name": "wsdd"}, {}, "schedule.name", "did you mean 'wsd'"),
        ({"decay_fraction": 0.2}, {}, "schedule.decay_fraction", "only to schedule name wsd (name is cosine)"),
        ({"name": "wsd", "decay_fraction": 0}, {}, "schedule.decay_fraction", "(0, 1]"),
        ({"name": "wsd", "decay_fraction": 1.5}, {}, "schedule.decay_fraction", "(0, 1]"),
        ({"name": "wsd", "decay_fraction": "late"}, {}, "schedule.decay_fraction", "expected"),
        ({"cooldown_evaluations": True}, {}, "schedule.cooldown_evaluations", "needs schedule name wsd"),
        ({"name": "wsd", "cooldown_evaluations": "yes please"}, {}, "schedule.cooldown_evaluations", "expected"),
        ({"name": "wsd", "cooldown_fraction": 0.1}, {}, "schedule.cooldown_fraction", "cooldown_evaluations: true"),
        ({"name": "wsd", "cooldown_evaluations": True, "cooldown_fraction": 0}, {}, "schedule.cooldown_fraction",
         "(0, 1]"),
        ({"name": "wsd", "cooldown_evaluations": True}, {"budget": SECONDS}, "schedule.cooldown_evaluations",
         "not seconds"),
        ({"name": "wsd", "cooldown_evaluation": True}, {}, "schedule.cooldown_evaluation",
         "did you mean 'cooldown_evaluations'"),
    ],
)
def test_bad_schedule_keys_name_their_path(schedule, more, path, words):
    with pytest.raises(ConfigError) as caught:
        parsed(schedule, **more)
    assert caught.value.path == path, str(caught.value)
    assert words in str(caught.value)
