"""The report's answer on synthetic studies whose truth is set: the LR slope and the rule it names
(or refuses to name), B_crit from steps to target and from the noise scale, and the recommendation
(with confirmation runs in a companion study: their mean, and their ranking)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweeps import report
from sweeps.confirmation.companion import link
from sweeps.results.analysis import analyse
from sweeps.results.critical import Reach, crossing, examples_ratio, fit_critical, steps_ratio, tradeoff_sentence
from sweeps.results.lr_advice import LrPoint, fit_lr_scaling
from sweeps.results.recommendation import answer, recommendation
from sweeps.trial.record import confirm_attrs
from tests.conftest import synthetic_study
from tests.dashboard_study import STUDY

BATCHES = (16, 32, 64, 128, 256, 512)
DISTRIBUTIONS = {"batch_size": IntDistribution(16, 1024, log=True), "lr_factor": FloatDistribution(0.1, 10, log=True)}


def add(study: optuna.Study, b: int, lr: float, value: float, curve: dict[int, float] | None = None,
        **attrs) -> None:
    """One complete trial with the attributes a real trial records (examples budget: 1/B updates per step)."""
    updates = 1000
    study.add_trial(create_trial(
        params={"batch_size": b, "lr_factor": 1.0}, distributions=DISTRIBUTIONS, value=value,
        user_attrs={"batch_size": b, "lr": lr, "coupling": "none", "updates": updates,
                    "examples_seen": updates * b, "epochs_completed": 10.0, **attrs},
        intermediate_values=curve or {updates * b: value}))


def lr_study(slope: float, scatter: tuple[float, ...] = (), storage: str | None = None) -> optuna.Study:
    """At each batch size the best LR is 0.01 (B/16)^slope (times scatter[i]); trials at factors of it
    score 0.95 - 0.05 ln(factor)^2, so factors 0.9..1.1 are good trials and 0.25..4 are not."""
    study = synthetic_study(storage)
    for i, b in enumerate(BATCHES):
        best = 0.01 * (b / 16) ** slope * (scatter[i] if scatter else 1.0)
        for factor in (0.25, 0.5, 0.9, 1.0, 1.1, 2.0, 4.0):
            add(study, b, best * factor, 0.95 - 0.05 * math.log(factor) ** 2)
    return study


@pytest.mark.parametrize("slope, rule", [(1.0, "linear"), (0.5, "sqrt"), (0.0, "none")])
def test_true_slope_recovered_and_its_rule_named(slope, rule):
    fit = analyse(lr_study(slope), with_importances=False).lr_fit
    assert fit.batch_sizes == list(BATCHES) and not fit.left_out
    assert all(len(fit.good[b]) == 3 for b in BATCHES), "factors 0.9, 1.0 and 1.1 are within 1% of the range"
    assert abs(fit.slope - slope) < 0.05 and fit.half_width < 0.1
    assert fit.rule == rule and fit.covered_rules == [rule]
    assert f"the {rule} rule" in fit.sentence() and fit.headline().endswith(f": the {rule} rule")


def test_a_minimized_metric_gets_the_same_answer():
    study = synthetic_study(direction="minimize")
    for b in BATCHES:
        for factor in (0.25, 0.9, 1.0, 1.1, 4.0):
            add(study, b, 0.01 * (b / 16) ** 0.5 * factor, 0.05 + 0.05 * math.log(factor) ** 2)
    add(study, 1024, 6.0, 0.5)  # far above (worse than) the best
    a = analyse(study, with_importances=False)
    assert a.lr_fit.rule == "sqrt" and 1024 in a.lr_fit.left_out
    assert "expect val_accuracy 0.05" in recommendation(a)


def test_wide_scatter_is_undetermined_and_says_what_would_narrow_it():
    fit = analyse(lr_study(0.5, scatter=(1.0, 6.0, 0.2, 3.0, 0.15, 2.0)), with_importances=False).lr_fit
    assert fit.rule is None and len(fit.covered_rules) >= 2
    sentence = fit.sentence()
    assert f"undetermined: the interval covers {fit.covered_rules[0]}..{fit.covered_rules[-1]}" in sentence
    assert "more trials at B=16, 512 (the ends of the fitted range)" in sentence
    assert fit.headline().endswith(f"undetermined (covers {fit.covered_rules[0]}..{fit.covered_rules[-1]})")


def test_slope_outside_every_rule():
    fit = analyse(lr_study(2.0), with_importances=False).lr_fit
    assert fit.covered_rules == [] and fit.rule is None
    assert "outside every rule (slope 2.00)" in fit.sentence()


def test_one_poor_trial_at_the_largest_batch_size_does_not_decide_the_slope():
    study = lr_study(0.5)
    add(study, 512, 6.0, 0.90)  # a poor trial with a huge LR beside the good ones at B=512
    fit = analyse(study, with_importances=False).lr_fit
    assert abs(fit.slope - 0.5) < 0.2 and fit.rule == "sqrt"

    study = lr_study(0.5)
    add(study, 1024, 6.0, 0.70)  # the only trial at a new largest batch size, far below the best
    fit = analyse(study, with_importances=False).lr_fit
    assert abs(fit.slope - 0.5) < 0.2 and 1024 in fit.left_out and 1024 not in fit.batch_sizes
    assert "left out of the LR fit: B=1024 (best 0.7)" in fit.notes()[1]


def test_tolerance_decides_which_trials_are_good_and_too_few_batch_sizes_fit_nothing():
    wide = analyse(lr_study(0.5), with_importances=False, tolerance=0.03).lr_fit
    assert all(len(wide.good[b]) == 5 for b in BATCHES), "factors 0.5 and 2 (0.024 below) are good too"
    points = [LrPoint(b, 0.01 * b, 0.9, i) for i, b in enumerate((16, 32))]
    fit = fit_lr_scaling(points)
    assert fit.slope is None and fit.rule is None and "need 3" in fit.sentence()


def reaching_study(s_min: float, b_crit: float, noise: tuple[float, ...], batches=BATCHES,
                   noise_scale: float | None = None) -> optuna.Study:
    """Per batch size, a trial whose accuracy rises linearly in examples and crosses 0.9 exactly at
    E(B) = S(B) B (times noise[i]), S(B) = s_min (1 + b_crit / B), evaluated every 4,000 examples;
    and a slower trial at each batch size (half the speed) that the fit must not use."""
    study = synthetic_study()
    for i, b in enumerate(batches):
        for speed in (1.0, 0.5):
            examples = s_min * (1 + b_crit / b) * b * noise[i] / speed
            steps = range(4000, int(2 * examples) + 4000, 4000)
            curve = {s: min(0.5 + 0.4 * s / examples, 0.99) for s in steps}
            extra = {} if noise_scale is None else {"noise_scale": noise_scale * (1 + 0.1 * (i % 3))}
            add(study, b, 0.01, curve[max(curve)], curve, examples_per_second=1000.0 * b ** 0.5, **extra)
            trial = study.trials[-1]
            assert trial.user_attrs["examples_seen"] / trial.user_attrs["updates"] == b
    return study


def test_critical_batch_size_recovered_from_interpolated_steps_to_target():
    noise = (1.06, 0.95, 1.04, 0.96, 1.05, 0.97)
    a = analyse(reaching_study(200, 100, noise), target=0.9, with_importances=False)
    fit = a.critical
    assert sorted(fit.reached) == list(BATCHES) and fit.not_reached == []
    for i, b in enumerate(BATCHES):  # interpolation between evaluations, not the grid's points
        assert fit.reached[b].updates == pytest.approx(200 * (1 + 100 / b) * noise[i], rel=1e-6)
    assert abs(fit.b_crit - 100) / 100 < 0.2 and abs(fit.s_min - 200) / 200 < 0.2
    low, high = fit.interval
    assert low < 100 < high
    assert "B_crit ~ " in fit.sentence("val_accuracy")


def test_too_few_batch_sizes_reaching_the_target_is_said():
    noise = (1.0,) * 6
    a = analyse(reaching_study(200, 100, noise, batches=(16, 32)), target=0.9, with_importances=False)
    assert a.critical.b_crit is None
    text = a.critical.sentence("val_accuracy")
    assert "too few batch sizes reached val_accuracy 0.9" in text and "B=16, 32 (need 3)" in text
    assert "not known yet" in recommendation(a)


def test_crossing_interpolates_and_flags_the_first_evaluation():
    assert crossing([10, 20, 30], [0.5, 0.7, 0.9], 0.8, True) == (pytest.approx(25.0), False)
    assert crossing([10, 20], [0.5, 0.3], 0.4, False) == (pytest.approx(15.0), False)
    assert crossing([10, 20], [0.95, 0.97], 0.9, True) == (10.0, True)
    assert crossing([10, 20], [0.5, 0.6], 0.9, True) is None
    early = {b: Reach(b, i, 100.0 * (1 + 64 / b), b == 16) for i, b in enumerate((16, 32, 64, 128))}
    assert fit_critical(early, 0.9).fitted == [32, 64, 128], "a first-evaluation crossing is only an upper bound"


def test_tradeoff_numbers_are_computed():
    assert steps_ratio(1.0) == 2 and examples_ratio(1.0) == 2
    assert steps_ratio(2.0) / steps_ratio(1.0) == 0.75 and examples_ratio(2.0) / examples_ratio(1.0) == 1.5
    assert tradeoff_sentence() == ("at B = B_crit a run takes twice the minimum steps and twice the minimum "
                                   "examples; doubling B from there saves 25% of the steps for 50% more examples")


def test_noise_scale_estimate_and_the_disagreement_warning():
    noise = (1.0,) * 6
    agree = analyse(reaching_study(200, 100, noise, noise_scale=120), target=0.9, with_importances=False)
    assert agree.noise is not None and 120 <= agree.noise.median <= 144
    assert "differ by" not in recommendation(agree)
    far = analyse(reaching_study(200, 100, noise, noise_scale=400), target=0.9, with_importances=False)
    assert "noise scale is only a proxy for critical batch size" in recommendation(far)
    assert "doubling B from there saves 25% of the steps" in recommendation(far)


def test_noise_scale_is_read_where_each_trial_reached_the_target():
    """Curves that grow 60 -> 6000 as accuracy rises: the estimate is each one's value at its first
    evaluation at the target (60 x 10 here), not its last; a range within 10x is an answer."""
    study = synthetic_study()
    for i, b in enumerate((32, 64, 128)):
        curve = {s: 0.5 + 0.1 * k for k, s in enumerate(range(4000, 28000, 4000), 1)}  # 0.6 .. 1.1
        steps = sorted(curve)
        noise = [[s, 60.0 * 10 ** (k / 2) * (1 + 0.1 * i)] for k, s in enumerate(steps)]  # 60 .. 18974
        add(study, b, 0.01, curve[steps[-1]], curve, noise_scale_curve=noise, noise_scale=noise[-1][1])
    a = analyse(study, target=0.8, with_importances=False)  # reached at the third evaluation
    assert a.noise.statistic == "at the first evaluation that reached the target"
    assert a.noise.median == pytest.approx(600 * 1.1) and a.noise.determined
    assert "B_simple ~ 660 (median at the first evaluation that reached the target" in a.noise.sentence()
    assert a.noise.changed == 3 and "B_crit ~ 660 from the gradient noise scale alone" in recommendation(a)


def test_report_refuses_a_negative_tolerance(tmp_path, capsys):
    lr_study(0.5, storage=f"sqlite:///{tmp_path / 'lr.db'}")
    config = yaml.safe_load(yaml.safe_dump(STUDY))
    config["study"].update(name="synthetic", storage="sqlite:///lr.db")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    assert report.main([str(tmp_path / "s.yaml"), "--tolerance", "-1"]) == 2
    assert "--tolerance must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "synthetic-report").exists()


def test_recommendation_spread_comes_from_the_good_trials_of_its_batch_size():
    a = analyse(lr_study(1.0), with_importances=False)
    text = recommendation(a)
    best = a.complete[0]
    assert f"train at batch size {best.user_attrs['batch_size']}" in text
    assert "mean +/- sd of 3 good trials" in text and "optimistic until confirmation runs" in text
    assert "scale the LR with the linear rule" in text


def test_examples_per_second_give_the_fastest_batch_size_in_seconds():
    a = analyse(reaching_study(200, 100, (1.0,) * 6), target=0.9, with_importances=False)
    # seconds to target = S(B) B / (1000 sqrt(B)) = 0.2 (1 + 100/B) sqrt(B): least at B = 100, so B=128
    assert ("In seconds, batch size stops paying past B=128: B=128 reached val_accuracy 0.9 fastest"
            in recommendation(a))


def test_study_note_starts_with_the_recommendation(tmp_path):
    from sweeps.config.study_file import load_config
    from sweeps.publish.notes import study_note

    study = lr_study(0.5)
    config = yaml.safe_load(yaml.safe_dump(STUDY))
    path = Path(tmp_path / "s.yaml")
    path.write_text(yaml.safe_dump(config))
    note = study_note(study, load_config(path), 1000)
    assert note.split("\n\n")[1:3] == ["### Recommendation", recommendation(analyse(study, with_importances=False))]


def confirmed_study(search: dict[int, float], runs: dict[int, list[float | None]]) -> optuna.Study:
    """A search (trial number -> value, at B = 32 for trial 0, 64, 128, ...) and its companion of
    confirmation runs (trial number -> the runs' values, None for a diverged run), linked as
    `sweeps confirm` links them."""
    storage = optuna.storages.InMemoryStorage()
    study = synthetic_study(storage)
    for number, value in sorted(search.items()):
        add(study, 32 * 2 ** number, 0.01, value, seed=number)
    companion = optuna.create_study(study_name="synthetic-confirm", storage=storage, direction="maximize")
    link(study, companion)
    for number, values in runs.items():
        for seed, value in enumerate(values, 100):
            trial = create_trial(params=study.trials[number].params, distributions=DISTRIBUTIONS,
                                 value=value, state=TrialState.COMPLETE if value is not None else TrialState.PRUNED,
                                 user_attrs={**confirm_attrs(number, seed), "seed": seed})
            companion.add_trial(trial)
    return study


def test_the_recommendation_expects_the_confirmed_mean_and_spread():
    text = recommendation(analyse(confirmed_study({0: 0.95, 1: 0.94}, {0: [0.93, 0.94, 0.95], 1: [0.90]}),
                                  with_importances=False))
    assert text.startswith("Recommendation: train at batch size 32 for 10 epochs (1,000 updates, 32,000 examples) "
                           "with peak LR 0.01 (coupling none; trial 0); expect val_accuracy 0.94 +/- 0.01 (mean "
                           "+/- sd of 3 confirmation runs with fresh seeds); its search-time value was 0.95. When")
    assert "optimistic" not in text and "ahead of" not in text


def test_the_recommendation_follows_the_confirmed_ranking_and_says_so():
    """Trial 0 led the search, trial 1 leads the confirmation runs: trial 1 is recommended, with its mean."""
    study = confirmed_study({0: 0.95, 1: 0.94, 2: 0.93}, {0: [0.90, 0.91, None], 1: [0.93, 0.935]})
    text = recommendation(analyse(study, with_importances=False))
    assert text.startswith("Recommendation: train at batch size 64 for 10 epochs (1,000 updates, 64,000 examples) "
                           "with peak LR 0.01 (coupling none; trial 1); expect val_accuracy 0.9325 +/- 0.0035 "
                           "(mean +/- sd of 2 confirmation runs with fresh seeds); its search-time value was 0.94. "
                           "The confirmation runs rank trial 1 first, ahead of the search's best, trial 0 "
                           "(val_accuracy 0.95 in the search, 0.905 confirmed), so this follows them. When")
    diverged = confirmed_study({0: 0.95, 1: 0.94}, {0: [None], 1: [0.92]})  # the search's best diverged
    assert ("expect val_accuracy about 0.92 (a single confirmation run with fresh seeds: no spread yet; repeat it "
            "with other seeds to measure one); its search-time value was 0.94. The confirmation runs rank trial 1 "
            "first, ahead of the search's best, trial 0 (val_accuracy 0.95 in the search, its confirmation runs "
            "diverged), so this follows them." in recommendation(analyse(diverged, with_importances=False)))
    mine = confirmed_study({0: 0.95, 1: 0.94}, {0: [0.90, None, 0.92]})
    assert ("(mean +/- sd of 2 confirmation runs with fresh seeds); 1 more diverged (loss NaN/inf); its search-time "
            "value was 0.95. When" in recommendation(analyse(mine, with_importances=False)))


def test_a_search_best_never_confirmed_is_recommended_as_the_search_found_it():
    """A newer best than the configurations `sweeps confirm` retrained: their means say nothing of it."""
    study = confirmed_study({0: 0.95, 1: 0.94}, {1: [0.93, 0.935]})
    text = recommendation(analyse(study, with_importances=False))
    assert "train at batch size 32" in text and "(trial 0)" not in text and "; trial 0);" in text
    assert ("the best of 2 trials is optimistic until confirmation runs repeat it (`sweeps confirm` has not "
            "retrained trial 0 yet)." in text)


def test_a_steps_to_target_interval_wider_than_10x_is_undetermined():
    """Scattered steps to target: B_crit's interval spans more than 10x, so neither the sentence nor
    the recommendation gives it as a number, and no disagreement is computed from it."""
    a = analyse(reaching_study(200, 100, (1.5, 0.6, 1.4, 0.7, 1.3, 0.6), noise_scale=1000), target=0.9,
                with_importances=False)
    low, high = a.critical.interval or (0.0, math.inf)
    assert a.critical.value is not None and (low <= 0 or high > 10 * low) and not a.critical.determined
    assert a.critical.sentence("val_accuracy").startswith("critical batch size from steps to target: undetermined (")
    advice = recommendation(a)
    assert "the steps-to-target fit is undetermined" in advice
    assert f"B_crit ~ {a.noise.median:.0f} from the gradient noise scale alone" in advice
    assert "differ by" not in advice


def test_the_short_answer_names_the_settings_the_value_the_caveat_and_the_next_command():
    search_only = answer(analyse(confirmed_study({0: 0.95, 1: 0.94}, {}), with_importances=False), "s.yaml")
    assert search_only == {
        "train": "batch size 32, peak LR 0.01 (coupling none; trial 0), 10 epochs (1,000 updates, 32,000 examples)",
        "expect": "val_accuracy about 0.95 (a single good trial at B=32: no spread yet)",
        "caveat": "the best of 2 trials is optimistic until confirmation runs repeat it",
        "next": "sweeps confirm s.yaml"}
    confirmed = answer(analyse(confirmed_study({0: 0.95, 1: 0.94}, {0: [0.93, 0.94, 0.95]}), with_importances=False),
                       "s.yaml")
    assert confirmed["expect"] == ("val_accuracy 0.94 +/- 0.01 (mean +/- sd of 3 confirmation runs with fresh seeds); "
                                   "its search-time value was 0.95")
    assert confirmed["caveat"].endswith("retune the LR if you change batch size")
    assert confirmed["next"] == "sweeps best s.yaml --trial 0 --export best.yaml (then sweeps run best.yaml)"
    diverged = answer(analyse(confirmed_study({0: 0.95, 1: 0.94}, {0: [0.90, None, 0.92]}), with_importances=False),
                      "s.yaml")
    assert diverged["caveat"] == "1 of its 3 confirmation runs diverged (loss NaN/inf)"
