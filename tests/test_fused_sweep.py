"""`objective.fuse` in a sweep (issue 26): the sweep's trials trained as fused groups, each member
a full trial in the store. Real training on the tiny regression task of tests/conftest.py.

Equivalence: K = 1 goes through the fused loop (`fused_group` recorded) and stores the values and
curves the unfused sweep stores, exactly (the CPU, the bmm path: tests/test_fused.py). K > 1:
each member's values equal the same trial trained alone (the same parameters and seed, in an
unfused sweep that replays them) within rel 1e-4: fused weights stay within 1e-5 of the solo run's
(tests/test_fused.py), and the MSE follows them.
"""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from objectives.task import Task, TrialSettings
from objectives.tasks.regression import regression
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.errors import Terminated, interruption_behind
from sweeps.loop.runner import run_sweep
from sweeps.run import main
from sweeps.trial.record import STARTED_KEY, TrialRecord, horizons_of
from tests.conftest import TINY, merged
from tests.test_horizons_study import HORIZONS
from tests.test_ledger import assert_books_balance, booked, ledger_of
from tests.test_workers import PG_URL, load, needs_pg, start, unique, wait_for_running, with_peers

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
REL = 1e-4


def seeded_data(settings: TrialSettings) -> Task:
    """The regression task with its data drawn from the trial's seed: it cannot fuse."""
    options = {**settings.options, "data_seed": settings.seed}
    return regression(TrialSettings(settings.batch_size, settings.lr, settings.seed, settings.device,
                                    options=options))


AUGMENTED_BUILDS: list[int] = []


def augmented(settings: TrialSettings) -> Task:
    """The regression task with an augmentation (the identity): it cannot fuse. Counts its builds."""
    AUGMENTED_BUILDS.append(settings.seed)
    task = regression(settings)
    task.augment = lambda batch, generator: batch
    return task


def sweep(tmp_path, data: dict, name: str = "fz") -> optuna.Study:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = parse_config(merged(merged(TINY, data), {"study": {"name": name}}), tmp_path)
    return run_sweep(config, target_of(config), show_progress=False)


def replay_alone(tmp_path, data: dict, trials: list) -> dict[int, optuna.trial.FrozenTrial]:
    """The same trials (parameters in number order, so the same seeds) in an unfused sweep."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = merged(data, {"objective": {"fuse": "off"}, "study": {"n_trials": len(trials)}})
    config = parse_config(merged(merged(TINY, data), {"study": {"name": "alone"}}), tmp_path)
    target = target_of(config)
    study = optuna.create_study(storage=target.storage_url, study_name="alone", direction=config.study.direction)
    for t in sorted(trials, key=lambda t: t.number):
        study.enqueue_trial(t.params)
    study = run_sweep(config, target, show_progress=False)
    return {t.number: t for t in study.get_trials(states=FINISHED)}


def by_number(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.number: t for t in study.get_trials(states=FINISHED)}


def assert_same_as_alone(fused: dict, alone: dict, rel: float = REL) -> None:
    assert set(fused) == set(alone)
    for number, t in fused.items():
        a = alone[number]
        assert t.params == a.params and t.user_attrs["seed"] == a.user_attrs["seed"], number
        assert t.state == a.state, number
        assert sorted(t.intermediate_values) == sorted(a.intermediate_values), number
        assert list(t.intermediate_values.values()) == pytest.approx(list(a.intermediate_values.values()), rel=rel)
        if t.value is not None:
            assert t.value == pytest.approx(a.value, rel=rel)
        for key in ("updates", "examples_seen", "stop_reason", "best_step", "planned_updates", "lr"):
            assert t.user_attrs[key] == a.user_attrs[key], (number, key)


def test_k1_goes_through_the_fused_loop_and_stores_what_the_unfused_sweep_stores(tmp_path):
    data = {"study": {"n_trials": 5}}
    fused = sweep(tmp_path / "a", merged(data, {"objective": {"fuse": 1}}))
    plain = sweep(tmp_path / "b", merged(data, {"objective": {"fuse": "off"}}))
    f, p = by_number(fused), by_number(plain)
    assert all(TrialRecord.of(t).fused_size == 1 and TrialRecord.of(t).fused_group for t in f.values())
    assert not any(TrialRecord.of(t).fused_group for t in p.values())
    # both loops mark each trial when its training starts (what other workers' asks count)
    assert all(STARTED_KEY in t.system_attrs for t in [*f.values(), *p.values()])
    assert_same_as_alone(f, p, rel=0)  # exactly


def test_four_members_each_store_what_their_solo_run_stores(tmp_path):
    data = {"study": {"n_trials": 8}, "objective": {"fuse": 4}}
    fused = by_number(sweep(tmp_path / "a", data))
    records = [TrialRecord.of(t) for t in fused.values()]
    # the first group forms at 4; a refill sampled at the other batch size starts the next group
    assert [r.fused_size for r in records[:4]] == [4] * 4 and max(r.fused_size for r in records) == 4
    assert len(fused) == 8
    groups = {r.fused_group: r.batch_size for r in records}
    assert all(len({r.batch_size for r in records if r.fused_group == g}) == 1 for g in groups)
    assert_same_as_alone(fused, replay_alone(tmp_path / "b", data, list(fused.values())))



def test_bf16_members_each_store_what_their_solo_bf16_run_stores(tmp_path):
    """`objective.precision: bf16` fuses (under autocast the stacked products run in bf16 as the
    solo run's do, through autograd); each member stores what its solo bf16 run stores."""
    data = {"study": {"n_trials": 4}, "objective": {"fuse": 2, "precision": "bf16"}}
    fused = by_number(sweep(tmp_path / "a", data))
    assert len(fused) == 4 and {TrialRecord.of(t).fused_size for t in fused.values()} == {2}
    assert_same_as_alone(fused, replay_alone(tmp_path / "b", data, list(fused.values())))


def test_micro_batches_fuse_and_each_member_stores_what_its_solo_run_stores(tmp_path):
    """`objective.max_micro_batch` fuses: each member's batch in the same micro-batches as its solo
    run's (gradient accumulation), recorded as the solo run records them."""
    data = {"study": {"n_trials": 4}, "objective": {"fuse": 2, "max_micro_batch": 8}}
    fused = by_number(sweep(tmp_path / "a", data))
    assert len(fused) == 4 and {TrialRecord.of(t).fused_size for t in fused.values()} == {2}
    assert any(t.user_attrs["accumulation_steps"] > 1 for t in fused.values())
    alone = replay_alone(tmp_path / "b", data, list(fused.values()))
    assert_same_as_alone(fused, alone)
    for number, t in fused.items():
        for key in ("accumulation_steps", "micro_batch"):
            assert t.user_attrs[key] == alone[number].user_attrs[key], (number, key)

def test_refills_keep_k_members_while_trials_remain_and_a_diverged_member_leaves_the_rest_alone(tmp_path):
    """One batch size, LRs up to 30: some members diverge early (PRUNED, stop_reason diverged)
    and new trials take their slots mid-run, each joining a group of 4 while trials remain;
    the others store what they store alone."""
    data = {"study": {"n_trials": 12}, "objective": {"fuse": 4},
            "search": {"batch_size": 32, "base_lr": {"low": 0.01, "high": 30.0, "log": True}}}
    fused = by_number(sweep(tmp_path / "a", data))
    records = {n: TrialRecord.of(t) for n, t in fused.items()}
    diverged = [n for n, r in records.items() if r.stop_reason == "diverged"]
    assert diverged and len(diverged) < len(fused)
    assert len({r.fused_group for r in records.values()}) == 1  # one group, refilled throughout
    # every trial joined a group of 4 but those asked when fewer than 4 trials were left
    assert all(records[n].fused_size == 4 for n in range(len(fused) - 3))
    mid_run = [n for n, r in records.items() if n >= 4 and r.fused_size == 4]
    assert mid_run
    assert_same_as_alone(fused, replay_alone(tmp_path / "b", data, list(fused.values())))


@pytest.mark.parametrize(("unit", "per_trial", "eval_every"),
                         [("updates", 40, 10), ("examples", 1024, 256), ("epochs", 4, 1)])
def test_each_counting_unit(tmp_path, unit, per_trial, eval_every):
    data = {"study": {"n_trials": 6}, "objective": {"fuse": 3},
            "budget": {"unit": unit, "per_trial": per_trial, "eval_every": eval_every}}
    fused = by_number(sweep(tmp_path / "a", data))
    assert len(fused) == 6 and all(TrialRecord.of(t).fused_group for t in fused.values())
    assert_same_as_alone(fused, replay_alone(tmp_path / "b", data, list(fused.values())))


def test_early_stopping_is_per_member_and_leaves_the_others_as_alone(tmp_path):
    data = {"study": {"n_trials": 8}, "objective": {"fuse": 4},
            "early_stopping": {"patience": 1, "min_delta": 0.05},
            "search": {"batch_size": 32, "base_lr": {"low": 0.001, "high": 0.3, "log": True}}}
    fused = by_number(sweep(tmp_path / "a", data))
    reasons = [TrialRecord.of(t).stop_reason for t in fused.values()]
    assert "early_stopping" in reasons and "budget" in reasons, reasons
    assert_same_as_alone(fused, replay_alone(tmp_path / "b", data, list(fused.values())))


def test_the_pruner_prunes_members_under_their_own_trials(tmp_path):
    """Pruning decisions depend on what the other trials reported first, so they are not
    compared with an unfused replay; each pruned member is PRUNED with its own curve."""
    data = {"study": {"n_trials": 10}, "objective": {"fuse": 4},
            "pruner": {"name": "median", "n_startup_trials": 2},
            "search": {"batch_size": 32, "base_lr": {"low": 0.001, "high": 0.3, "log": True}}}
    finished = sweep(tmp_path, data).get_trials(states=FINISHED)
    assert len(finished) == 10
    pruned = [t for t in finished if TrialRecord.of(t).stop_reason == "pruned"]
    assert pruned and all(t.state == TrialState.PRUNED and t.intermediate_values for t in pruned)


def test_the_total_budget_is_never_exceeded(tmp_path):
    data = {"study": {"n_trials": 20, "total_budget": {"amount": 2000, "unit": "examples"}},
            "objective": {"fuse": 4},
            "budget": {"unit": "examples", "per_trial": 1024, "eval_every": 256},
            "search": {"batch_size": [32, 64], "epochs": {"low": 1, "high": 4}}}
    config = parse_config(merged(merged(TINY, data), {"study": {"name": "led"}}), tmp_path)
    target = target_of(config)
    study = run_sweep(config, target, show_progress=False)
    assert len(study.get_trials(states=FINISHED)) >= 2
    assert_books_balance("led", target.storage_url, 2000)


def horizon_counts(trial) -> list[tuple]:
    """What a trial's horizons record that fusion leaves exact: lengths, steps, counts, curves' steps."""
    return [(h.length, h.step, h.best_step, h.updates, h.examples, h.stop_reason, h.branch_updates,
             h.branch_examples, [s for s, _ in h.curve]) for h in horizons_of(TrialRecord.of(trial))]


@pytest.mark.parametrize("k", [1, 3])
def test_with_horizons_each_member_answers_every_length_as_its_solo_run(tmp_path, k):
    """`budget.horizons` with fusion: each member branches its shorter horizons' decays in the
    group and records what its solo run records (a group of one exactly), and the pruner sees
    its horizons only (successive halving, rungs at the horizons)."""
    data = merged(HORIZONS, {"study": {"n_trials": 6}, "objective": {"fuse": k},
                             "pruner": {"name": "successive_halving", "reduction_factor": 2,
                                        "min_resource": 10}})
    fused = by_number(sweep(tmp_path / "a", data))
    assert len(fused) == 6 and max(TrialRecord.of(t).fused_size for t in fused.values()) == k
    assert {t.state for t in fused.values()} == {TrialState.COMPLETE, TrialState.PRUNED}
    if k == 1:
        alone = by_number(sweep(tmp_path / "b", merged(data, {"objective": {"fuse": "off"}})))
        assert_same_as_alone(fused, alone, rel=0)
    else:  # pruning follows the order trials report in, which fusion changes: replayed without the pruner,
        # each trial's horizons up to where the pruner stopped it
        alone = replay_alone(tmp_path / "b", merged(data, {"pruner": {"name": "none"}}), list(fused.values()))
        assert_same_as_alone({n: t for n, t in fused.items() if t.state == TrialState.COMPLETE},
                             {n: t for n, t in alone.items() if fused[n].state == TrialState.COMPLETE})
    for number, t in fused.items():
        answered = horizon_counts(t)
        assert answered == horizon_counts(alone[number])[: len(answered)], number
        values = [h.value for h in horizons_of(TrialRecord.of(t))]
        assert values == pytest.approx([h.value for h in horizons_of(TrialRecord.of(alone[number]))][: len(values)],
                                       rel=0 if k == 1 else REL)
        assert sorted(t.intermediate_values) == [10, 20, 40][: len(values)]  # rungs at the horizons


def test_with_horizons_each_member_reserves_its_branches_in_the_ledger(tmp_path):
    """As alone (tests/test_horizons_study.py): a trial reserves 40 updates and 6 of branches; a
    total of 130 holds two trials, and a group of 3 starts only two of them."""
    data = merged(HORIZONS, {"study": {"n_trials": 6, "total_budget": {"amount": 130, "unit": "updates"}},
                             "objective": {"fuse": 3}})
    config = parse_config(merged(merged(TINY, data), {"study": {"name": "hzfz"}}), tmp_path)
    target = target_of(config)
    study = run_sweep(config, target, show_progress=False)
    trained = [t for t in study.trials if TrialRecord.of(t).updates is not None]
    assert len(trained) == 2 and all(TrialRecord.of(t).fused_group for t in trained)
    assert sorted(booked("hzfz", target.storage_url).values()) == [(46.0, 46.0), (46.0, 46.0)]
    assert ledger_of("hzfz", target.storage_url).stopped


def test_confirm_with_horizons_trains_fused_runs_each_with_its_queued_seed(tmp_path):
    """`sweeps confirm` on a study with horizons and `objective.fuse: 2`: the companion's runs
    train as fused groups, each with the configuration and fresh seed it was queued with, and
    each answers every horizon."""
    from sweeps import confirm, exits
    path = write(tmp_path, "hzc", merged(HORIZONS, {"study": {"n_trials": 4}, "objective": {"fuse": 2}}))
    assert main([path, "--quiet"]) == 0
    assert confirm.main([path, "--top", "2", "--seeds", "2", "--quiet"]) == exits.OK
    url = f"sqlite:///{tmp_path}/hzc.db"
    searched = {t.number: t for t in optuna.load_study(study_name="hzc", storage=url).trials}
    runs = optuna.load_study(study_name="hzc-confirm", storage=url).get_trials(states=(TrialState.COMPLETE,))
    assert len(runs) == 4
    for t in runs:
        record = TrialRecord.of(t)
        assert record.seed == record.confirm_seed and t.params == searched[record.confirms_trial].params
        assert record.fused_size == 2 and record.fused_group
        assert [h.length for h in horizons_of(record)] == [10, 20, 40] and t.value == horizons_of(record)[-1].value


def test_standard_errors_and_noise_scales_fuse_each_member_its_own(tmp_path):
    """measure.value_se in a fused sweep: each trial records the standard errors of its replay
    alone; with pruner.noise_margin (which measures them) the study fuses and prunes on them, with
    horizons too; measure.noise_scale fuses, each member measuring its own."""
    data = {"study": {"n_trials": 4}, "objective": {"fuse": 2}, "measure": {"value_se": True}}
    finished = sweep(tmp_path / "fused", data).get_trials(states=FINISHED)
    assert len(finished) == 4 and all(TrialRecord.of(t).fused_size == 2 for t in finished)
    alone = replay_alone(tmp_path / "alone", data, finished)
    for t in finished:
        fused, solo = TrialRecord.of(t).value_se_curve, TrialRecord.of(alone[t.number]).value_se_curve
        assert fused and [s for s, _ in fused] == [s for s, _ in solo]
        assert [se for _, se in fused] == pytest.approx([se for _, se in solo], rel=REL)
    margin = {"study": {"n_trials": 6}, "objective": {"fuse": 2}, "pruner": {"name": "median", "noise_margin": 1}}
    finished = sweep(tmp_path / "margin", margin, name="margin").get_trials(states=FINISHED)
    assert len(finished) == 6 and all(TrialRecord.of(t).fused_group and TrialRecord.of(t).value_se for t in finished)
    # the noise scale too: each member measures its own
    noise = {"study": {"n_trials": 4}, "objective": {"fuse": 2}, "measure": {"noise_scale": True}}
    finished = sweep(tmp_path / "noise", noise, name="noise").get_trials(states=FINISHED)
    assert len(finished) == 4 and all(TrialRecord.of(t).fused_size == 2 for t in finished)
    assert all(TrialRecord.of(t).noise_scale_curve and TrialRecord.of(t).noise_scale for t in finished)
    finished = sweep(tmp_path / "noisehz", merged(HORIZONS, noise), name="noisehz").get_trials(states=FINISHED)
    assert len(finished) == 4 and all(TrialRecord.of(t).fused_size == 2 for t in finished)
    assert all(TrialRecord.of(t).noise_scale and len(horizons_of(TrialRecord.of(t))) == 3 for t in finished)
    # with horizons too: each finished horizon carries its best evaluation's standard error
    finished = sweep(tmp_path / "hz", merged(HORIZONS, margin), name="hz").get_trials(states=FINISHED)
    assert len(finished) == 6 and all(TrialRecord.of(t).fused_group for t in finished)
    assert all(h.value_se > 0 for t in finished for h in horizons_of(TrialRecord.of(t)))


def write(folder, name: str, data: dict) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(merged(merged(TINY, data), {"study": {"name": name}})))
    return str(path)


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"schedule": {"cooldown_evaluations": True}}, "schedule.cooldown_evaluations is not measured in a fused group"),
    ({"objective": {"task": "tests.test_fused_sweep:seeded_data"}}, "member 1's data differs from member 0's"),
    ({"sampler": {"name": "grid"}}, "the grid sampler"),
])
def test_an_explicit_k_that_cannot_fuse_is_exit_2_naming_why_and_auto_runs_alone(tmp_path, capsys, overrides,
                                                                                   reason):
    path = write(tmp_path, "refused", merged({"objective": {"fuse": 4}}, overrides))
    assert main([path, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "objective.fuse: 4 cannot fuse this study" in err and reason in err
    path = write(tmp_path, "alone", merged(merged({"objective": {"fuse": "auto"}, "study": {"n_trials": 20}},
                                                  overrides), {"sampler": {"name": "random"}}
                                           if "sampler" in overrides else {}))
    code = main([path, "--quiet"])
    out = capsys.readouterr().out
    if "sampler" in overrides:
        return  # auto with the grid sampler: checked above, the same refusal
    assert code == 0
    line = [s for s in out.splitlines() if s.startswith("objective.fuse auto: trials train one at a time: ")]
    assert len(line) == 1 and reason in line[0]


def test_a_bad_fuse_value_is_exit_2_with_one_line(tmp_path, capsys):
    for value, message in ((0, "objective.fuse: must be auto, off or a group size from 1 to 64 (got 0)"),
                           ("many", "objective.fuse: ")):
        path = write(tmp_path, "bad", {"objective": {"fuse": value}})
        assert main([path, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err


def test_an_unquoted_off_turns_fusion_off_in_the_file_and_from_set(tmp_path, capsys):
    """`fuse: off` as the docs write it: YAML 1.1 reads an unquoted off as false, which must mean
    off, not an error (it was "expected an integer, got bool False"). `fuse: true` stays an error."""
    data = merged(TINY, {"study": {"name": "plain", "n_trials": 20}})
    text = yaml.safe_dump(data).replace("objective:\n", "objective:\n  fuse: off\n", 1)
    assert "  fuse: off\n" in text and yaml.safe_load(text)["objective"]["fuse"] is False
    (tmp_path / "plain.yaml").write_text(text)
    assert parse_config(yaml.safe_load(text), tmp_path).objective.fuse == "off"
    assert main([str(tmp_path / "plain.yaml"), "--quiet"]) == 0  # 20 trials: auto would fuse them
    study = optuna.load_study(study_name="plain", storage=f"sqlite:///{tmp_path / 'plain.db'}")
    assert len(study.get_trials(states=FINISHED)) == 20
    assert not any(TrialRecord.of(t).fused_group for t in study.trials)
    for flag, code in (("objective.fuse=off", 0), ("objective.fuse=no", 0), ("objective.fuse=true", 2)):
        assert main([write(tmp_path, "set", {}), "--dry-run", "--set", flag]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "objective.fuse: " in err and "got True" in err


def test_auto_measures_k_once_per_batch_size_and_says_it(tmp_path, capsys):
    data = {"study": {"n_trials": 20}, "objective": {"fuse": "auto"}}
    study = sweep(tmp_path, data)
    out = capsys.readouterr().out
    lines = [s for s in out.splitlines() if s.startswith("objective.fuse auto: batch ")]
    batches = {TrialRecord.of(t).batch_size for t in study.get_trials(states=FINISHED)}
    assert 1 <= len(lines) == len(batches) and all("trains in groups of" in s for s in lines)
    assert all("at most 2, a tenth of the study's trials" in s for s in lines)
    assert len(study.get_trials(states=FINISHED)) == 20


def test_the_default_fuses_a_study_of_20_trials_and_trains_a_smaller_one_alone_without_a_line(tmp_path, capsys):
    """objective.fuse defaults to auto: groups of at most a tenth of the study's trials, so a study
    of fewer than 20 trials runs the unfused loop, saying nothing about groups it never forms."""
    assert "fuse" not in TINY["objective"]
    small = sweep(tmp_path / "small", {"study": {"n_trials": 19}}, name="small")
    assert "objective.fuse" not in capsys.readouterr().out
    assert not any(TrialRecord.of(t).fused_group for t in small.get_trials(states=FINISHED))
    assert len(small.get_trials(states=FINISHED)) == 19
    large = sweep(tmp_path / "large", {"study": {"n_trials": 20}}, name="large")
    assert "objective.fuse auto: batch " in capsys.readouterr().out
    assert all(TrialRecord.of(t).fused_group for t in large.get_trials(states=FINISHED))


def test_the_fuse_setting_is_not_part_of_the_search(tmp_path):
    """A study run unfused resumes fused (and back) without a search change."""
    first = sweep(tmp_path, {"study": {"n_trials": 2}, "objective": {"fuse": "off"}})
    assert len(first.get_trials(states=FINISHED)) == 2
    again = sweep(tmp_path, {"study": {"n_trials": 4}, "objective": {"fuse": 2}})
    assert len(again.get_trials(states=FINISHED)) == 4


def workers_study(folder, name: str) -> str:
    return write(folder, name, {"study": {"n_trials": 10, "heartbeat_interval": 1, "grace_period": 3},
                                "objective": {"fuse": 3, **with_peers(folder, 2)}})


def assert_workers_fused(study: optuna.Study) -> None:
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == 10 and not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    records = [TrialRecord.of(t) for t in finished]
    assert all(r.fused_group for r in records) and len({r.worker for r in records}) == 2
    for t in study.get_trials(states=(TrialState.FAIL,)):
        assert t.user_attrs["error"].startswith("not started") and not t.intermediate_values


def test_two_workers_on_sqlite_each_fuse_their_own_group(tmp_path, run_here):
    path = workers_study(tmp_path, "w2")
    url = f"sqlite:///{tmp_path}/w2.db"
    done = run_here([path, "--quiet", "--workers", "2"], storage=url)
    assert done.returncode == 0, done.stderr
    assert_workers_fused(load("w2", url))


@needs_pg
def test_two_workers_on_postgres_each_fuse_their_own_group(tmp_path, run_here):
    name = unique("fused-w2")
    path = workers_study(tmp_path, name)
    done = run_here([path, "--quiet", "--workers", "2"], storage=PG_URL)
    assert done.returncode == 0, done.stderr
    assert_workers_fused(load(name, PG_URL))


def test_seeded_data_differs_by_seed():
    """The refusal test's task does follow the seed (else it would fuse)."""
    a, b = (seeded_data(TrialSettings(16, 0.1, seed, torch.device("cpu"), options={"dim": 8, "n_train": 64}))
            for seed in (1, 2))
    assert not torch.equal(a.train[0], b.train[0])


def wait_for_members(name: str, url: str, n: int, timeout: float = 60) -> None:
    """Until a fused group of `n` members trains (n trials RUNNING), or `timeout` seconds."""
    wait_for_running(name, url)
    deadline = time.monotonic() + timeout
    while len(load(name, url).get_trials(states=(TrialState.RUNNING,))) < n and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_killed_fused_worker_resumes_with_its_group_requeued(tmp_path):
    """SIGKILL mid-group: the group's open trials go stale, are failed and queued again when the
    sweep resumes, and the resumed sweep trains them (each with its own parameters) to the trials
    asked for."""
    url = f"sqlite:///{tmp_path}/kill.db"
    path = write(tmp_path, "kill", {"study": {"n_trials": 6, "heartbeat_interval": 1, "grace_period": 2},
                                    "objective": {"fuse": 3},
                                    "budget": {"unit": "updates", "per_trial": 200000, "eval_every": 100000}})
    process = start(path, storage=url)
    try:
        wait_for_members("kill", url, 3)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    running = {t.number: t.params for t in load("kill", url).get_trials(states=(TrialState.RUNNING,))}
    assert len(running) == 3
    time.sleep(3)  # past the grace period: stale
    config = parse_config(merged(TINY, {"study": {"name": "kill", "n_trials": 6, "heartbeat_interval": 1,
                                                 "grace_period": 2}, "objective": {"fuse": 3}}), tmp_path)
    # the shorter budget (the killed one trained for minutes): a change allowed, so the resume is quick
    study = run_sweep(config, target_of(config, url), show_progress=False, changes="allow")
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == 6 and not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    retried = {t.system_attrs["failed_trial"]: t.params for t in finished if "failed_trial" in t.system_attrs}
    assert retried == running  # each killed member trained again with its own parameters
    assert all(TrialRecord.of(t).fused_group for t in finished)


def test_gpus_workers_each_fuse_their_own_group(tmp_path, capsys, monkeypatch):
    """--gpus starts one worker per GPU, each seeing its GPU alone: each fuses its own groups, as a
    worker on one device does (the plan is accepted with an explicit K, and a worker child of
    --gpus runs the fused loop)."""
    from objectives.registry import resolve_task
    from sweeps.config.gpus import GPU_ENV
    from sweeps.config.plan import budget_of
    from sweeps.loop.fused_loop import FusedSweepLoop, fused_loop_for

    path = write(tmp_path, "gpus", {"objective": {"fuse": 4}})
    assert main([path, "--dry-run", "--gpus", "0"]) == 0
    assert "worker 0 -> GPU 0" in capsys.readouterr().out
    monkeypatch.setenv(GPU_ENV, "0")  # a worker child of --gpus
    for fuse, trials in ((4, 3), ("auto", 20)):
        config = parse_config(merged(TINY, {"objective": {"fuse": fuse}, "study": {"n_trials": trials}}), tmp_path)
        assert fused_loop_for(config, resolve_task("regression", tmp_path), budget_of(config)) is FusedSweepLoop


def test_sigterm_closes_every_open_member_and_queues_it_again(tmp_path):
    url = f"sqlite:///{tmp_path}/term.db"
    path = write(tmp_path, "term", {"study": {"n_trials": 6}, "objective": {"fuse": 3},
                                    "budget": {"unit": "updates", "per_trial": 200000, "eval_every": 100000}})
    process = start(path, storage=url)
    try:
        wait_for_members("term", url, 3)
        time.sleep(0.5)  # training
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143
    study = load("term", url)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 3 and all(t.user_attrs["error"].startswith("interrupted") for t in failed)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 3  # queued again, to resume


def chained(error: BaseException, behind: BaseException, cause: bool = False) -> BaseException:
    """`error` as raised while handling `behind` (`raise error`), or from it (`raise error from behind`)."""
    if cause:
        error.__cause__ = behind
    else:
        error.__context__ = behind
    return error


def test_the_interruption_behind_an_error_is_found_through_its_context_and_cause():
    terminated, ctrl_c = Terminated("signal 15"), KeyboardInterrupt()
    assert interruption_behind(chained(RuntimeError("torch's"), terminated)) is terminated
    assert interruption_behind(chained(RuntimeError("torch's"), ctrl_c, cause=True)) is ctrl_c
    assert interruption_behind(chained(RuntimeError("x"), chained(OSError("y"), terminated))) is terminated
    assert interruption_behind(terminated) is terminated
    assert interruption_behind(chained(RuntimeError("a trial's own failure"), ValueError("its cause"))) is None
    looped = RuntimeError("a")
    looped.__context__ = chained(RuntimeError("b"), looped)
    assert interruption_behind(looped) is None


@pytest.mark.parametrize("fuse", [3, "off"])
def test_a_signal_that_torch_raised_as_its_own_error_stops_the_sweep_as_the_signal_does(tmp_path, fuse):
    """A SIGTERM landing inside torch's own bookkeeping came out as torch's RuntimeError (its context
    the Terminated): the group's trials failed with it and the sweep trained on, past the test's 60 s
    (a fresh-clone CI run of the test above). The loss here raises that error once, at its 30th call:
    the sweep stops with SIGTERM's exit code, its open trials failed as interrupted and queued again."""
    url = f"sqlite:///{tmp_path}/sig.db"
    options = {**TINY["objective"]["options"], "at": 30}
    path = write(tmp_path, "sig", {"study": {"n_trials": 6},
                                   "objective": {"fuse": fuse, "options": options,
                                                 "task": "tests.tasks_for_tests:regression_signalled_in_torch"},
                                   "budget": {"unit": "updates", "per_trial": 400, "eval_every": 200}})
    process = start(path, storage=url)
    try:
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err
    study = load("sig", url)
    failed = study.get_trials(states=(TrialState.FAIL,))
    # the trials training (a group of 3, or one) and any asked ahead ('not started: interrupted: ...')
    assert len(failed) >= (3 if fuse == 3 else 1), [t.user_attrs.get("error") for t in failed]
    errors = [t.user_attrs["error"] for t in failed]
    assert all(error.endswith("interrupted: Terminated") for error in errors), errors
    assert len(study.get_trials(states=(TrialState.WAITING,))) == len(failed)  # queued again, to resume
    assert not study.get_trials(states=FINISHED)


def test_a_fused_trial_exported_trains_alone_to_its_value_within_the_fused_tolerance_and_says_so(tmp_path, capsys):
    from sweeps.best import main as best_main
    data = {"study": {"n_trials": 4}, "objective": {"fuse": 4}}
    path = write(tmp_path, "fz", data)
    assert main([path, "--quiet"]) == 0
    study = optuna.load_study(study_name="fz", storage=f"sqlite:///{tmp_path}/fz.db")
    best = study.best_trial
    assert TrialRecord.of(best).fused_size > 1
    capsys.readouterr()
    exported = tmp_path / "out" / "best.yaml"
    exported.parent.mkdir()
    assert best_main([path, "--export", str(exported)]) == 0
    err = capsys.readouterr().err
    assert f"note: trial {best.number} trained in a fused group of " in err and "not bit for bit" in err
    assert main([str(exported), "--quiet"]) == 0
    target = target_of(parse_config(yaml.safe_load(exported.read_text()), exported.parent))
    again = optuna.load_study(study_name=f"fz-trial{best.number}", storage=target.storage_url)
    assert again.best_value == pytest.approx(best.value, rel=1e-4)


def test_a_fused_trials_horizon_exported_trains_alone_to_the_value_it_recorded(tmp_path, capsys):
    """`sweeps best --export --horizon 20` of a study with horizons and groups of 4: the exported
    run (that horizon's dedicated run, alone) gives the value its fused member recorded at 20,
    within the fused tolerance."""
    from sweeps.best import main as best_main
    path = write(tmp_path, "hzx", merged(HORIZONS, {"study": {"n_trials": 4}, "objective": {"fuse": 4}}))
    assert main([path, "--quiet"]) == 0
    exported = tmp_path / "out" / "h20.yaml"
    exported.parent.mkdir()
    assert best_main([path, "--export", str(exported), "--horizon", "20"]) == 0
    number = int(capsys.readouterr().out.split("trains trial ")[1].split()[0])
    trial = optuna.load_study(study_name="hzx", storage=f"sqlite:///{tmp_path}/hzx.db").trials[number]
    recorded = {h.length: h for h in horizons_of(TrialRecord.of(trial))}[20]
    assert TrialRecord.of(trial).fused_size == 4
    assert main([str(exported), "--quiet"]) == 0
    target = target_of(parse_config(yaml.safe_load(exported.read_text()), exported.parent))
    (again,) = optuna.load_study(study_name=f"hzx-trial{number}-h20", storage=target.storage_url).trials
    assert again.value == pytest.approx(recorded.value, rel=REL)
    assert TrialRecord.of(again).updates == recorded.updates
    assert TrialRecord.of(again).fused_size in (None, 1)  # alone, or a group of one (its run alone exactly)


def test_a_task_that_cannot_fuse_alone_is_built_once_for_the_check_under_auto(tmp_path, capsys):
    """An augmenting (or Dataset) task is refused on its first build: the check costs one build."""
    AUGMENTED_BUILDS.clear()
    study = sweep(tmp_path, {"study": {"n_trials": 20},
                             "objective": {"fuse": "auto", "task": "tests.test_fused_sweep:augmented"}})
    out = capsys.readouterr().out
    assert "objective.fuse auto: trials train one at a time: the task augments its batches" in out
    assert len(study.get_trials(states=FINISHED)) == 20
    assert len(AUGMENTED_BUILDS) == 20 + 1 + 1  # its trials, the runner's probe (N), the check's one build


def test_a_fused_sweep_builds_no_torch_optim_optimizer(tmp_path):
    """A fused group's members train with the group's stacked optimizer, so the trial's torch.optim
    optimizer is never built, and the process never loads torch._dynamo (over a second of imports)."""
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "fused.yaml"
    path.write_text(yaml.safe_dump(merged(TINY, {"objective": {"fuse": 2}, "study": {"n_trials": 4}})))
    code = ("import sys; from sweeps.run import main; code = main([sys.argv[1], '--quiet']); "
            "print(code, 'torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.splitlines()[-1] == "0 False", done.stdout[-2000:] + done.stderr[-2000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert all(t.user_attrs.get("fused_group") for t in study.trials)


def test_a_signal_while_a_member_leaves_closes_it_and_queues_it_again(tmp_path, monkeypatch):
    """A SIGTERM landing while a finished member's outcome is built, before its record is queued: the
    member is still one of the group's open trials, so the sweep closes it and queues it again with
    the rest (it was taken off that list first, and left RUNNING until it went stale)."""
    from sweeps.trial import fused_group
    finish = fused_group.finish_member
    calls = []

    def signalled_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second member to leave
            raise Terminated("signal 15")
        return finish(*args, **kwargs)

    monkeypatch.setattr(fused_group, "finish_member", signalled_once)
    config = parse_config(merged(TINY, {"study": {"n_trials": 8, "name": "leave"}, "objective": {"fuse": 4},
                                        "search": {"batch_size": 32}}), tmp_path)
    target = target_of(config)
    with pytest.raises(Terminated):
        run_sweep(config, target, show_progress=False)
    study = optuna.load_study(study_name=target.study_name, storage=target.storage_url)
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states, states
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) >= 3, states  # the one leaving and the rest of the group
    retried = {t.system_attrs.get("failed_trial") for t in study.get_trials(states=(TrialState.WAITING,))}
    assert retried == {t.number for t in failed}, states
