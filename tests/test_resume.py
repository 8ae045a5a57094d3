"""Resume safely: the fingerprint of a study's search, --allow-changes, --new-study, the complete
message and the study's own name in its stored config."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import yaml

from sweeps import exits
from sweeps.config.fingerprint import changes_between, fingerprint_of
from sweeps.run import main
from sweeps.trial.record import CONFIG_ATTR, FINGERPRINT_ATTR, FINGERPRINT_HISTORY_ATTR
from tests.conftest import PG_URL, TINY, merged, needs_pg

FAST = {"study": {"n_trials": 1, "storage": "sqlite:///resume.db"},
        "budget": {"per_trial": 20, "eval_every": 10}, "dashboard": {"keep_checkpoints": 0, "notes": False}}


def write_study(folder: Path, **overrides) -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(merged(merged(TINY, FAST), overrides)))
    return path


def load(folder: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'resume.db'}")


# --- what the fingerprint holds -------------------------------------------------------------------

def test_only_keys_that_define_the_search_change_the_fingerprint(tiny_config):
    base = fingerprint_of(tiny_config())
    elsewhere = tiny_config(study={"n_trials": 50, "storage": "sqlite:///x.db", "seed": 9, "max_failures": 2},
                            sampler={"name": "tpe"}, pruner={"name": "median"},
                            objective={"device": "cpu", "eval_batch_size": 7, "max_micro_batch": 8,
                                       "loader": {"workers": 3}},
                            dashboard={"keep_checkpoints": 0})
    assert fingerprint_of(elsewhere) == base
    changed = tiny_config(objective={"options": {"dim": 4}, "optimizer": "adam"},
                          budget={"per_trial": 30}, search={"batch_size": [16]}, schedule={"name": "linear"})
    assert [str(c) for c in changes_between(base, fingerprint_of(changed))] == [
        "budget.per_trial: 40 -> 30", "objective.optimizer: sgd -> adam", "objective.options.dim: 8 -> 4",
        "schedule.decay_fraction: 0.2 -> (unset)", "schedule.name: wsd -> linear",
        "search.batch_size: [16, 64] -> [16]"]


# --- a rerun with another search -----------------------------------------------------------------

def test_a_study_from_the_cosine_default_is_told_how_to_keep_it(tmp_path, capsys):
    """The default schedule became wsd (issue 17): a study that ran under cosine stops with exit 2
    and the line that keeps its schedule, and resumes once the file names it."""
    study_file = write_study(tmp_path)
    assert main([str(study_file), "--quiet", "--set", "schedule.name=cosine"]) == exits.OK
    capsys.readouterr()
    assert main([str(study_file), "--quiet", "--n-trials", "2"]) == exits.USAGE
    err = capsys.readouterr().err
    assert "schedule.name: cosine -> wsd" in err and "`schedule: {name: cosine}`" in err
    assert main([str(study_file), "--quiet", "--n-trials", "2", "--set", "schedule.name=cosine"]) == exits.OK
    assert len(load(tmp_path).trials) == 2


def test_a_changed_search_stops_with_exit_2_then_allow_changes_carries_on(tmp_path, capsys):
    study_file = write_study(tmp_path)
    assert main([str(study_file), "--quiet"]) == exits.OK
    capsys.readouterr()
    changed = ["--set", "budget.per_trial=30", "--set", "objective.device=cpu", "--set", "study.seed=5"]
    assert main([str(study_file), "--quiet", "--n-trials", "2", *changed]) == exits.USAGE
    err = capsys.readouterr().err
    assert "budget.per_trial: 20 -> 30" in err
    assert "device" not in err and "seed" not in err and "n_trials" not in err  # they do not define the search
    assert "--new-study NAME" in err and "--allow-changes" in err
    assert len(load(tmp_path).trials) == 1, "nothing trained"

    assert main([str(study_file), "--quiet", "--n-trials", "2", "--allow-changes", *changed]) == exits.OK
    study = load(tmp_path)
    assert len(study.trials) == 2
    history = study.user_attrs[FINGERPRINT_HISTORY_ATTR]
    assert [entry["changes"] for entry in history] == [["budget.per_trial: 20 -> 30"]]
    assert study.user_attrs[FINGERPRINT_ATTR]["budget.per_trial"] == 30
    assert study.user_attrs[CONFIG_ATTR]["budget"]["per_trial"] == 30
    assert "budget.per_trial: 20 -> 30" in capsys.readouterr().out
    # the change is now the study's search: the same command needs no flag any more
    assert main([str(study_file), "--quiet", "--n-trials", "2", *changed]) == exits.OK


def test_new_study_starts_afresh_in_the_same_store_under_its_own_name(tmp_path):
    study_file = write_study(tmp_path)
    assert main([str(study_file), "--quiet"]) == exits.OK
    assert main([str(study_file), "--quiet", "--set", "search.batch_size=[16]", "--new-study", "tiny-b"]) == exits.OK
    fresh = load(tmp_path, "tiny-b")
    assert [t.user_attrs["batch_size"] for t in fresh.trials] == [16]
    assert fresh.user_attrs[CONFIG_ATTR]["study"]["name"] == "tiny-b"
    assert fresh.user_attrs[FINGERPRINT_ATTR]["search.batch_size"] == [16]
    assert load(tmp_path).user_attrs[FINGERPRINT_ATTR]["search.batch_size"] == [16, 64]  # the old one untouched


def test_a_study_made_before_fingerprints_gets_one_silently(tmp_path):
    study_file = write_study(tmp_path)
    old = optuna.create_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'resume.db'}", direction="minimize")
    old.set_user_attr(CONFIG_ATTR, {"study": {"name": "tiny"}})
    assert main([str(study_file), "--quiet"]) == exits.OK
    assert load(tmp_path).user_attrs[FINGERPRINT_ATTR]["budget.per_trial"] == 20


# --- nothing left to do; the study's name ---------------------------------------------------------

def test_a_complete_study_says_so_and_exits_0(tmp_path, capsys):
    study_file = write_study(tmp_path)
    assert main([str(study_file), "--quiet", "--study-name", "renamed"]) == exits.OK
    capsys.readouterr()
    assert main([str(study_file), "--quiet", "--study-name", "renamed"]) == exits.OK
    assert "study complete: 1 of 1 trials; raise --n-trials to continue" in capsys.readouterr().out
    study = load(tmp_path, "renamed")
    assert len(study.trials) == 1
    assert study.user_attrs[CONFIG_ATTR]["study"]["name"] == "renamed"  # not the file's "tiny"


def test_workers_parent_checks_once_and_a_complete_study_starts_no_worker(tmp_path, capsys):
    study_file = write_study(tmp_path)
    assert main([str(study_file), "--quiet"]) == exits.OK
    changed = ["--set", "budget.per_trial=30", "--n-trials", "2"]
    assert main([str(study_file), "--quiet", "--workers", "2", *changed]) == exits.USAGE  # before any worker
    # a worker child (what --workers starts, after its parent checked) never fails the check
    assert main([str(study_file), "--quiet", "--as-worker", *changed]) == exits.OK
    assert len(load(tmp_path).trials) == 2
    capsys.readouterr()
    assert main([str(study_file), "--quiet", "--workers", "2", "--allow-changes", *changed]) == exits.OK
    assert "study complete: 2 of 2 trials; raise --n-trials to continue" in capsys.readouterr().out


@needs_pg
def test_postgres_study_checks_its_search_and_says_where_checkpoints_go(tmp_path, capsys):
    name = f"resume-{uuid.uuid4().hex[:8]}"
    study_file = write_study(tmp_path, study={"name": name, "storage": PG_URL}, dashboard={"keep_checkpoints": 1})
    try:
        assert main([str(study_file), "--quiet"]) == exits.OK
        out = capsys.readouterr().out
        folder = tmp_path.resolve() / f"{name}-artifacts"
        assert f"checkpoints: {folder}, beside the study file" in out and "dashboard.artifacts" in out
        assert len(list(folder.iterdir())) == 1, "the best trial's checkpoint is there"
        assert main([str(study_file), "--quiet", "--n-trials", "2", "--set", "search.base_lr.high=0.5"]) == exits.USAGE
        assert "search.base_lr.high: 0.1 -> 0.5" in capsys.readouterr().err
        named = tmp_path / "kept"
        assert main([str(study_file), "--quiet", "--set", f"dashboard.artifacts={named}"]) == exits.OK
        assert f"checkpoints: {named} (every worker" in capsys.readouterr().out
    finally:
        optuna.delete_study(study_name=name, storage=PG_URL)
