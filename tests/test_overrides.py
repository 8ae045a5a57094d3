"""`--set KEY.PATH=VALUE`: applied to the study file before validation, validated like the file,
recorded with the study and passed on to the workers of --workers (real sweeps on SQLite)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from sweeps.config.overrides import apply_overrides
from sweeps.config.study_file import load_config, parse_config
from sweeps.config.target import target_of
from sweeps.errors import ConfigError
from sweeps.loop.runner import recorded_overrides
from sweeps.loop.workers import worker_command
from sweeps.run import main
from sweeps.trial.record import OVERRIDES_ATTR
from tests.conftest import TINY, merged

REPO = Path(__file__).resolve().parents[1]


def write_study(folder: Path, **sections) -> Path:
    data = merged(merged(TINY, {"study": {"storage": f"sqlite:///{folder / 'tiny.db'}"}}), sections)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_nested_keys_are_overridden_and_the_file_mapping_is_left_alone():
    data = merged(TINY, {})
    config = parse_config(data, overrides=["search.base_lr.high=0.5", "budget.per_trial=80",
                                           "objective.options.dim=4", "study.direction=maximize"])
    assert config.search.base_lr.high == 0.5 and config.search.base_lr.low == 0.01
    assert config.budget.per_trial == 80
    assert config.objective.options == {"dim": 4, "n_train": 256, "n_val": 64}
    assert config.study.direction == "maximize"
    assert data == TINY  # applied to a copy


def test_a_later_override_of_the_same_key_wins():
    config = parse_config(TINY, overrides=["budget.per_trial=80", "budget.per_trial=60"])
    assert config.budget.per_trial == 60


def test_a_new_key_in_a_section_with_defaults_and_a_section_left_out():
    config = parse_config(TINY, overrides=["sampler.n_startup_trials=2", "dashboard.keep_checkpoints=0",
                                           "early_stopping.patience=3", "objective.loader.workers=0"])
    assert config.sampler.name == "random" and config.sampler.n_startup_trials == 2
    assert config.dashboard.keep_checkpoints == 0
    assert config.early_stopping.patience == 3 and config.early_stopping.min_delta == 0.0
    assert config.objective.loader.workers == 0


def test_list_and_mapping_values_and_list_indexes():
    config = parse_config(TINY, overrides=["search.batch_size=[32, 64, 128]", "search.coupling=[none,sqrt]"])
    assert config.search.batch_size == [32, 64, 128]
    assert config.search.coupling == ["none", "sqrt"]
    config = parse_config(TINY, overrides=["search.batch_size.1=128"])
    assert config.search.batch_size == [16, 128]
    config = parse_config(TINY, overrides=["search.batch_size={low: 8, high: 64, power_of_two: true}"])
    assert config.search.batch_sizes() == [8, 16, 32, 64]
    config = parse_config(TINY, overrides=["study.storage=", "schedule.name=linear"])  # empty: YAML null
    assert config.study.storage is None and config.schedule.name == "linear"


@pytest.mark.parametrize(("override", "message"), [
    ("budget", "expected KEY.PATH=VALUE"),
    ("=3", "expected KEY.PATH=VALUE"),
    ("search..low=3", "empty part in the key path"),
    ("search.batch_size=[32", "is not a YAML value"),
    ("search.base_lr.high.x=1", "search.base_lr.high is float 0.1, not a mapping"),
    ("search.batch_size.x=1", "index it with a number"),
    ("search.batch_size.5=1", "holds 2 items: no index 5"),
])
def test_a_malformed_override_names_its_set_argument(override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        apply_overrides(TINY, [override])
    assert caught.value.path.startswith("--set ")


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_misspelt_key_exits_2_with_did_you_mean_in_one_line(tmp_path, capsys):
    study = write_study(tmp_path)
    code, _, err = run_main(capsys, str(study), "--dry-run", "--set", "search.bach_size=[32]")
    assert code == 2
    assert err.count("\n") == 1
    assert "search.bach_size: unknown key (did you mean 'batch_size'?)" in err
    assert "--set search.bach_size=[32]" in err
    code, _, err = run_main(capsys, str(study), "--dry-run", "--set", "serach.base_lr=0.1")
    assert code == 2 and "serach: unknown key (did you mean 'search'?)" in err


def test_a_bad_type_or_value_exits_2(tmp_path, capsys):
    study = write_study(tmp_path)
    code, _, err = run_main(capsys, str(study), "--dry-run", "--set", "study.n_trials=many")
    assert code == 2 and "study.n_trials: expected an integer, got str 'many'" in err
    code, _, err = run_main(capsys, str(study), "--dry-run", "--set", "sampler.name=tps")
    assert code == 2 and "did you mean 'tpe'" in err and err.count("\n") == 1
    code, _, err = run_main(capsys, str(study), "--dry-run", "--set", "search.base_lr.low=0.5")
    assert code == 2 and "search.base_lr: empty or inverted range" in err  # a check, not just a type


def test_the_dry_run_shows_the_overridden_values(tmp_path, capsys):
    study = write_study(tmp_path)
    code, out, _ = run_main(capsys, str(study), "--dry-run", "--set", "search.batch_size=[8,128]",
                            "--set", "budget.per_trial=80")
    assert code == 0
    assert "budget per trial: 80 updates" in out
    rows = [line.split()[0] for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert rows == ["8", "128"]
    assert "overrides: --set search.batch_size=[8,128] --set budget.per_trial=80" in out
    assert not (tmp_path / "tiny.db").exists()


def test_overridden_values_reach_the_trials_and_are_recorded(tmp_path, capsys):
    study_file = write_study(tmp_path)
    sets = ["search.batch_size=[8, 32]", "search.base_lr={low: 0.2, high: 0.3}", "study.n_trials=2"]
    code, _, err = run_main(capsys, str(study_file), "--quiet", *[a for s in sets for a in ("--set", s)])
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    trials = study.get_trials()
    assert len(trials) == 2  # study.n_trials from --set
    for trial in trials:
        assert trial.params["batch_size"] in (8, 32)
        assert 0.2 <= trial.params["base_lr"] <= 0.3
        assert trial.user_attrs["batch_size"] == trial.params["batch_size"]
    stored = study.user_attrs["config"]
    assert stored["search"]["batch_size"] == [8, 32]
    assert stored["search"]["base_lr"] == {"low": 0.2, "high": 0.3, "log": False}
    assert study.user_attrs[OVERRIDES_ATTR] == sets


def test_a_study_without_overrides_stores_no_overrides_attr(tmp_path, capsys):
    study_file = write_study(tmp_path, study={"n_trials": 1})
    assert run_main(capsys, str(study_file), "--quiet")[0] == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    assert OVERRIDES_ATTR not in study.user_attrs


def test_a_store_password_in_an_override_is_not_recorded():
    recorded = recorded_overrides(["study.storage=postgresql://me:secret@db:5432/s", "budget.per_trial=9"])
    assert "secret" not in recorded[0] and recorded[0].startswith("study.storage=postgresql://me:")
    assert recorded[1] == "budget.per_trial=9"


def test_a_worker_command_line_carries_the_overrides_in_order(tmp_path):
    study_file = write_study(tmp_path)
    sets = ["search.batch_size=[8]", "budget.per_trial=60"]
    config = load_config(study_file, overrides=sets)
    command = worker_command(str(study_file), target_of(config), 1, sets)
    assert command[-4:] == ["--set", "search.batch_size=[8]", "--set", "budget.per_trial=60"]
    assert "--set" not in worker_command(str(study_file), target_of(config), 1)


def test_the_workers_of_a_sweep_train_the_overridden_config(tmp_path, run_here):
    """The parent runs in this process; its two workers are real processes given the overrides."""
    study_file = write_study(tmp_path, study={"n_trials": 4})
    done = run_here([str(study_file), "--quiet", "--workers", "2",
                     "--set", "search.batch_size=[8]", "--set", "search.base_lr=0.07"], cwd=REPO)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))  # not a surplus ask's stub
    assert len(trials) == 4
    assert {t.user_attrs["worker"] for t in trials} <= {0, 1}
    assert {t.user_attrs["batch_size"] for t in trials} == {8}  # the file says [16, 64]
    assert {t.user_attrs["lr"] for t in trials} == {0.07}  # coupling none: lr = base_lr
    assert study.user_attrs[OVERRIDES_ATTR] == ["search.batch_size=[8]", "search.base_lr=0.07"]
