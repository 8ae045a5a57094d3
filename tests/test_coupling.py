"""LR coupling rules and the warmup + schedule that ends on the last planned update."""

from __future__ import annotations

import math

import pytest

from objectives.training.coupling import couple, effective_lr
from objectives.training.schedule import Schedule


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("none", 0.1), ("linear", 0.1 * 4), ("sqrt", 0.1 * 2), ("adam_sqrt", 0.1 * 2)],
)
def test_effective_lr_at_four_times_the_reference(rule, expected):
    assert effective_lr(rule, 0.1, 256, 64) == pytest.approx(expected)


def test_smaller_batch_scales_down():
    assert effective_lr("linear", 0.1, 16, 64) == pytest.approx(0.025)
    assert effective_lr("sqrt", 0.1, 16, 64) == pytest.approx(0.05)


def test_adam_sqrt_rescales_betas_and_eps():
    coupled = couple("adam_sqrt", 1e-3, 128, 64, betas=(0.9, 0.999), eps=1e-8)
    assert coupled.lr == pytest.approx(1e-3 * math.sqrt(2))
    assert coupled.betas == pytest.approx((0.8, 0.998))  # 1 - k(1 - beta), k = 2
    assert coupled.eps == pytest.approx(1e-8 / math.sqrt(2))
    half = couple("adam_sqrt", 1e-3, 32, 64)
    assert half.betas == pytest.approx((0.95, 0.9995))


def test_adam_sqrt_clamps_beta_for_large_factors():
    coupled = couple("adam_sqrt", 1e-3, 64 * 32, 64)
    assert coupled.betas[0] == 0.0  # 1 - 32 * 0.1 < 0
    assert 0.0 <= coupled.betas[1] < 1.0


def test_other_rules_leave_adam_settings_alone():
    assert couple("sqrt", 1e-3, 128, 64).betas is None


def test_warmup_ramps_to_the_peak():
    schedule = Schedule.build(1.0, 100, 0.1, "constant", 0.0)
    assert schedule.warmup_updates == 10
    ramp = [schedule.lr_at(u) for u in range(10)]
    assert ramp == sorted(ramp) and ramp[0] == pytest.approx(1 / 11)
    assert schedule.lr_at(10) == schedule.lr_at(99) == 1.0


@pytest.mark.parametrize("shape", ["cosine", "linear"])
@pytest.mark.parametrize("final", [0.0, 0.1])
def test_schedule_reaches_its_final_value_at_the_last_planned_update(shape, final):
    schedule = Schedule.build(0.5, 37, 0.1, shape, final)
    lrs = [schedule.lr_at(u) for u in range(37)]
    assert lrs[-1] == pytest.approx(0.5 * final)
    assert lrs[-2] > lrs[-1]
    decay = lrs[schedule.warmup_updates :]
    assert decay == sorted(decay, reverse=True)
    assert max(lrs) <= 0.5


def test_cosine_midpoint():
    schedule = Schedule.build(1.0, 99, 0.0, "cosine", 0.0)
    assert schedule.lr_at(0) == 1.0
    assert schedule.lr_at(49) == pytest.approx(0.5, abs=1e-9)


def test_warmup_never_swallows_the_whole_trial():
    schedule = Schedule.build(1.0, 3, 0.99, "cosine", 0.0)
    assert schedule.warmup_updates == 2
    assert schedule.lr_at(2) == 0.0


# --- More rules by hand (docs/background.md#learning-rate-coupling: lr = lr0 * f(B / B0)) ---


@pytest.mark.parametrize("rule", ["none", "linear", "sqrt", "adam_sqrt"])
def test_every_rule_is_the_identity_at_the_reference_batch(rule):
    assert effective_lr(rule, 0.037, 64, 64) == pytest.approx(0.037)
    coupled = couple(rule, 0.037, 64, 64, betas=(0.9, 0.999), eps=1e-8)
    if rule == "adam_sqrt":
        assert coupled.betas == pytest.approx((0.9, 0.999)) and coupled.eps == pytest.approx(1e-8)


@pytest.mark.parametrize(
    ("batch_size", "ref", "none", "linear", "sqrt"),
    [
        (8192, 256, 0.1, 3.2, 0.1 * math.sqrt(32)),  # Goyal et al.: 0.1 per 256 -> 3.2 at 8192
        (512, 64, 0.1, 0.8, 0.1 * math.sqrt(8)),
        (16, 64, 0.1, 0.025, 0.05),
        (100, 64, 0.1, 0.15625, 0.125),
    ],
)
def test_effective_lr_by_hand(batch_size, ref, none, linear, sqrt):
    assert effective_lr("none", 0.1, batch_size, ref) == pytest.approx(none)
    assert effective_lr("linear", 0.1, batch_size, ref) == pytest.approx(linear)
    assert effective_lr("sqrt", 0.1, batch_size, ref) == pytest.approx(sqrt)
    assert effective_lr("adam_sqrt", 0.1, batch_size, ref) == pytest.approx(sqrt)
    assert couple("linear", 0.1, batch_size, ref).lr == pytest.approx(linear)


def test_adam_sqrt_with_other_betas():
    coupled = couple("adam_sqrt", 2e-3, 256, 64, betas=(0.8, 0.95), eps=1e-6)  # k = 4
    assert coupled.lr == pytest.approx(4e-3)
    assert coupled.betas == pytest.approx((1 - 4 * 0.2, 1 - 4 * 0.05))  # (0.2, 0.8)
    assert coupled.eps == pytest.approx(1e-6 / 2)


def test_adam_sqrt_clamps_beta_below_one_for_tiny_factors():
    coupled = couple("adam_sqrt", 1e-3, 1, 1024)  # k = 1/1024: 1 - k(1 - beta) creeps towards 1
    assert coupled.betas == (0.9999, 0.9999)
    assert coupled.lr == pytest.approx(1e-3 / 32)
    assert coupled.eps == pytest.approx(1e-8 * 32)


def test_adam_sqrt_clamped_betas_stay_in_range_for_any_factor():
    for batch_size in (1, 2, 16, 64, 640, 6400, 64000):
        b1, b2 = couple("adam_sqrt", 1e-3, batch_size, 64).betas
        assert 0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0


@pytest.mark.parametrize("rule", ["none", "linear", "sqrt"])
def test_only_adam_sqrt_touches_betas_and_eps(rule):
    coupled = couple(rule, 1e-3, 256, 64, betas=(0.5, 0.6), eps=1e-3)
    assert coupled.betas is None and coupled.eps is None


# --- Warmup and schedule ---


@pytest.mark.parametrize("shape", ["constant", "cosine", "linear"])
def test_warmup_is_a_linear_ramp_that_reaches_the_peak_on_the_first_update_after_it(shape):
    schedule = Schedule.build(0.4, 50, 0.1, shape, 0.0)
    assert schedule.warmup_updates == 5
    for u in range(5):
        assert schedule.lr_at(u) == pytest.approx(0.4 * (u + 1) / 6)
    assert schedule.lr_at(5) == pytest.approx(0.4)


def test_warmup_rounds_to_the_nearest_update():
    assert Schedule.build(1.0, 37, 0.1, "cosine", 0.0).warmup_updates == 4  # 3.7
    assert Schedule.build(1.0, 37, 0.0, "cosine", 0.0).warmup_updates == 0
    assert Schedule.build(1.0, 37, 0.0, "cosine", 0.0).lr_at(0) == 1.0  # no warmup: starts at the peak


@pytest.mark.parametrize("final", [0.0, 0.25])
def test_cosine_and_linear_by_hand(final):
    # 11 planned updates, no warmup: progress = u / 10.
    cosine = Schedule.build(2.0, 11, 0.0, "cosine", final)
    linear = Schedule.build(2.0, 11, 0.0, "linear", final)
    for u in range(11):
        cos_factor = 0.5 * (1 + math.cos(math.pi * u / 10))
        assert cosine.lr_at(u) == pytest.approx(2.0 * (final + (1 - final) * cos_factor))
        assert linear.lr_at(u) == pytest.approx(2.0 * (final + (1 - final) * (1 - u / 10)))


@pytest.mark.parametrize("shape", ["cosine", "linear"])
@pytest.mark.parametrize(("planned", "warmup"), [(2, 0.0), (10, 0.3), (959, 0.1), (3755, 0.05)])
@pytest.mark.parametrize("final", [0.0, 0.01, 0.5, 1.0])
def test_last_planned_update_gets_exactly_the_final_fraction(shape, planned, warmup, final):
    schedule = Schedule.build(0.3, planned, warmup, shape, final)
    assert schedule.lr_at(planned - 1) == pytest.approx(0.3 * final, rel=1e-12, abs=1e-15)
    if final < 1.0:
        assert schedule.lr_at(planned - 2) > schedule.lr_at(planned - 1)  # still decaying before it
    assert schedule.lr_at(planned + 5) == pytest.approx(0.3 * final, abs=1e-15)  # no rebound past the plan


def test_constant_stays_constant_after_warmup():
    schedule = Schedule.build(0.05, 200, 0.1, "constant", 0.0)
    assert {schedule.lr_at(u) for u in range(schedule.warmup_updates, 200)} == {0.05}
    assert Schedule.build(0.05, 200, 0.0, "constant", 0.0).lr_at(0) == 0.05
