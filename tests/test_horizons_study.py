"""Horizons in a study (budget.horizons): the refusals that keep them exact, the fingerprint of
studies without them, what a trial records and reports, the ledger reserving the branches ahead,
and horizons under --workers on each store and across a resume."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from sweeps.budget.spending import Spending
from sweeps.config.fingerprint import fingerprint_of
from sweeps.config.plan import budget_of
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.errors import ConfigError
from sweeps.loop.runner import run_sweep
from sweeps.run import main
from sweeps.trial.record import TrialRecord, consumed, horizons_of
from tests.conftest import TINY, merged
from tests.test_ledger import booked, ledger_of, write
from tests.test_workers import PG_URL, load, needs_pg, start, unique, with_peers

HORIZONS = {"budget": {"unit": "updates", "per_trial": 40, "eval_every": 5, "horizons": [10, "0.5x"]}}


def error_of(overrides: dict) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(merged(merged(TINY, HORIZONS), overrides))
    return caught.value


@pytest.mark.parametrize(("overrides", "path", "words"), [
    ({"budget": {"unit": "seconds", "per_trial": 2.0, "eval_every": 0.5, "horizons": [1.0]}}, "budget.horizons",
     "need a counting budget"),
    ({"schedule": {"name": "cosine"}}, "budget.horizons", "need schedule name wsd"),
    ({"schedule": {"cooldown_evaluations": True}}, "budget.horizons", "replace schedule.cooldown_evaluations"),
    ({"search": {"epochs": [1, 2]}}, "budget.horizons", "leave search.epochs out"),
    ({"budget": {"horizons": [10, 50]}}, "budget.horizons[1]", "<= per_trial (40 updates)"),
    ({"budget": {"horizons": [10, "half"]}}, "budget.horizons[1]", "like '0.25x'"),
    ({"budget": {"horizons": [20, "0.5x"]}}, "budget.horizons[1]", "repeats the length 20"),
    ({"budget": {"horizons": [12.5]}}, "budget.horizons[0]", "whole number of updates"),
    ({"budget": {"horizons": []}}, "budget.horizons", "at least one length"),
    ({"schedule": {"warmup_updates": 3}, "search": {"warmup_fraction": {"low": 0.0, "high": 0.1}}},
     "schedule.warmup_updates", "set one of the two"),
    ({"schedule": {"warmup_updates": -1}}, "schedule.warmup_updates", ">= 0"),
])
def test_what_horizons_cannot_answer_exactly_is_refused_naming_the_key(overrides, path, words):
    err = error_of(overrides)
    assert err.path == path and words in str(err), str(err)


def test_a_refused_horizon_study_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, "hz", HORIZONS)
    assert main([path, "--dry-run", "--set", "schedule.name=cosine"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "budget.horizons" in err and "wsd" in err


def test_horizons_are_resolved_ascending_with_per_trial_the_longest():
    config = parse_config(merged(merged(TINY, HORIZONS), {"budget": {"horizons": ["0.5x", 10]}}))
    assert config.budget.horizon_units() == (10.0, 20.0, 40.0)
    assert parse_config(TINY).budget.horizon_units() is None


def test_a_study_without_horizons_keeps_its_fingerprint():
    """The new keys enter a fingerprint only when set: studies fingerprinted before them resume."""
    plain = fingerprint_of(parse_config(TINY))
    assert not [key for key in plain if key in ("budget.horizons", "schedule.warmup_updates")]
    with_horizons = fingerprint_of(parse_config(merged(TINY, HORIZONS)))
    assert with_horizons["budget.horizons"] == [10, "0.5x"]


def test_each_trial_records_its_horizons_and_the_pruner_sees_them(tmp_path):
    data = merged(merged(TINY, HORIZONS), {"study": {"name": "hz", "n_trials": 3}})
    config = parse_config(data, tmp_path)
    study = run_sweep(config, target_of(config), show_progress=False)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    for trial in trials:
        record = TrialRecord.of(trial)
        horizons = horizons_of(record)
        assert [h.length for h in horizons] == [10, 20, 40]
        assert sorted(trial.intermediate_values) == [10, 20, 40]  # the pruner's steps: horizons, not the grid
        assert [trial.intermediate_values[h.step] for h in horizons] == [h.value for h in horizons]
        assert trial.value == horizons[-1].value
        assert [h.updates for h in horizons] == [10, 20, 40] and horizons[-1].branch_updates == 0
        assert [len(h.curve) for h in horizons] == [2, 4, 8]  # every 5 updates, as a dedicated run
        assert record.warmup_updates == 0 and record.branch_updates == sum(h.branch_updates for h in horizons) > 0
        assert consumed(trial, "updates") == 40 + record.branch_updates


def test_the_ledger_reserves_the_branches_before_a_trial_starts(tmp_path):
    """Each trial costs 40 updates plus its branches (2 for horizon 10, 4 for 20: a 0.2 decay),
    46 in all. A total of 130 holds two such trials: reserving the run alone (40) would start a
    third."""
    data = merged(merged(TINY, HORIZONS), {"study": {"name": "hzled", "n_trials": 6,
                                                     "total_budget": {"amount": 130, "unit": "updates"}}})
    config = parse_config(data, tmp_path)
    spending = Spending.of(config, budget_of(config), 256)
    assert spending.planned(16, None) == 46
    target = target_of(config)
    study = run_sweep(config, target, show_progress=False)
    trained = [t for t in study.trials if TrialRecord.of(t).updates is not None]
    assert len(trained) == 2
    books = booked("hzled", target.storage_url)
    assert sorted(books.values()) == [(46.0, 46.0), (46.0, 46.0)]
    assert ledger_of("hzled", target.storage_url).stopped


@pytest.mark.parametrize(("store", "fuse"), [("sqlite", "off"), pytest.param("postgresql", 2, marks=needs_pg)])
def test_horizons_under_workers_and_across_a_resume(tmp_path, store, fuse):
    """Each store, and each worker fused or not (`objective.fuse: 2`: each worker's group of 2;
    the other two pairs cost 40 s of the suite and add no path: fused workers on SQLite and
    unfused ones on PostgreSQL are tested without horizons in tests/test_fused_sweep.py and
    tests/test_workers.py)."""
    name = unique("hzw")
    url = PG_URL if store == "postgresql" else f"sqlite:///{tmp_path}/hzw.db"
    path = write(tmp_path, name, merged(HORIZONS, {"pruner": {"name": "successive_halving",
                                                              "reduction_factor": 2},
                                                   "objective": {"fuse": fuse, **with_peers(tmp_path, 2)}}),
                 n_trials=4, heartbeat_interval=1, grace_period=6)
    done = start(path, "--workers", "2", storage=url)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    done = start(path, "--n-trials", "6", storage=url)  # a resume: two more trials
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    study = load(name, url)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 6  # a trial a worker asked ahead and closed unstarted is FAIL, and trains nothing
    assert all(t.user_attrs.get("error", "").startswith("not started")
               for t in study.get_trials(states=(TrialState.FAIL,)))
    assert len({t.user_attrs["worker"] for t in finished[:4]}) == 2
    assert all(bool(TrialRecord.of(t).fused_group) == (fuse != "off") for t in finished)
    for trial in finished:
        lengths = [h.length for h in horizons_of(TrialRecord.of(trial))]
        assert lengths == [10, 20, 40][: len(lengths)] and lengths
        assert sorted(trial.intermediate_values) == [10, 20, 40][: len(lengths)]
        if trial.state == TrialState.COMPLETE:
            assert lengths == [10, 20, 40]
