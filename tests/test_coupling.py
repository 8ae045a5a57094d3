"""LR coupling rules and the warmup + schedule that ends on the last planned update."""

from __future__ import annotations

import math

import pytest

from sweeps.coupling import Schedule, couple, effective_lr


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
