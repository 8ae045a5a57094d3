"""`--format json` of `sweeps studies` and `sweeps best`: one JSON document on stdout with what the
text shows, read back against the store as optuna.load_study reads it; the store given each of the
three ways; errors still one line on stderr with their exit codes; text unchanged by the flag."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from sweeps import best, exits, studies
from sweeps.trial.record import TrialRecord, horizons_of
from tests.conftest import TINY, in_process, load_study

NAME = "fmt"


def write(folder: Path, storage: str | None = None) -> Path:
    data = copy.deepcopy(TINY)
    data["study"].update(name=NAME, n_trials=3, total_budget={"amount": 100000, "unit": "updates"})
    data["budget"].update(horizons=[10, "0.5x"])
    if storage is not None:
        data["study"]["storage"] = storage
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def swept(tmp_path, run_here) -> tuple[Path, str]:
    """A finished 3-trial study with horizons and a total budget, in a store away from the study file:
    (a study file that does not name the store, its URL)."""
    db = tmp_path / "elsewhere" / "kept.db"
    db.parent.mkdir()
    url = f"sqlite:///{db}"
    done = run_here([str(write(tmp_path)), "--quiet", "--storage", url])
    assert done.returncode == exits.OK, done.stderr[-2000:]
    return tmp_path / "study.yaml", url


def given(way: str, study_file: Path, url: str, monkeypatch) -> list[str]:
    """The arguments (and environment) that name the store `way`."""
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    if way == "--storage":
        return [str(study_file), "--storage", url]
    if way == "$SWEEPS_STORAGE":
        monkeypatch.setenv("SWEEPS_STORAGE", url)
        return [str(study_file)]
    named = study_file.parent / "named"  # study.storage: a study file of its own that names the store
    named.mkdir(exist_ok=True)
    return [str(write(named, url))]


def document(done) -> dict:
    assert done.returncode == exits.OK, done.stderr[-2000:]
    assert all(line.startswith("note: ") for line in done.stderr.splitlines()), done.stderr  # notes stay on stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("way", ["--storage", "$SWEEPS_STORAGE", "study.storage"])
def test_studies_json_holds_what_the_store_holds(way, swept, monkeypatch, capfd):
    study_file, url = swept
    out = document(in_process(studies.main, [*given(way, study_file, url, monkeypatch), "--format", "json",
                                             "--workers"], capfd))
    stored = load_study(NAME, url)
    trials = stored.get_trials(deepcopy=False)
    assert out["store"] == url
    [row] = out["studies"]
    assert row["study"] == NAME and row["direction"] == "minimize"
    assert row["complete"] == sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert (row["pruned"], row["failed"], row["running"]) == (0, 0, 0)
    assert row["best"] == stored.best_value, "the full value, not the text's 6 digits"
    budget = row["total_budget"]
    assert budget["amount"] == 100000 and budget["unit"] == "updates"
    assert budget["spent"] > 0 and math.isclose(budget["left"], budget["amount"] - budget["spent"])
    last = max(d for t in trials for d in (t.datetime_start, t.datetime_complete) if d)
    assert row["last_activity"] == last.isoformat()
    [worker] = row["workers"]
    assert worker["worker"] == 0 and worker["finished"] == 3 and worker["failed"] == 0
    assert {TrialRecord.of(t).worker for t in trials} == {0}


@pytest.mark.parametrize("way", ["--storage", "$SWEEPS_STORAGE", "study.storage"])
def test_best_json_holds_the_best_trials_and_the_best_per_horizon(way, swept, monkeypatch, capfd):
    study_file, url = swept
    out = document(in_process(best.main, [*given(way, study_file, url, monkeypatch), "--format", "json",
                                          "--top", "2"], capfd))
    stored = load_study(NAME, url)
    trials = stored.get_trials(deepcopy=False)
    assert (out["study"], out["metric"], out["direction"]) == (NAME, "val_mse", "minimize")
    assert out["counts"] == {"complete": 3, "pruned": 0, "failed": 0, "running": 0} and out["finished"] == 3
    ranked = sorted(trials, key=lambda t: (t.value, t.number))
    assert [r["trial"] for r in out["best"]] == [t.number for t in ranked[:2]]
    for row, trial in zip(out["best"], ranked):
        record = TrialRecord.of(trial)
        assert row["value"] == trial.value and row["params"] == trial.params
        assert (row["batch_size"], row["lr"], row["seed"], row["updates"]) == \
            (record.batch_size, record.lr, record.seed, record.updates)
    horizons = out["horizons"]
    assert horizons["unit"] == "updates"
    lengths = sorted({h.length for t in trials for h in horizons_of(TrialRecord.of(t))})
    assert [h["horizon"] for h in horizons["best"]] == lengths == [10, 20, 40]
    for row in horizons["best"]:
        answers = [(h.value, t.number) for t in trials for h in horizons_of(TrialRecord.of(t))
                   if h.length == row["horizon"] and h.value is not None]
        assert (row["value"], row["trial"]) == min(answers)
        assert row["trials"] == len(answers)


def test_the_text_is_what_it_was_without_the_flag(swept, capfd):
    study_file, url = swept
    for main in (studies.main, best.main):
        plain = in_process(main, [str(study_file), "--storage", url], capfd)
        text = in_process(main, [str(study_file), "--storage", url, "--format", "text"], capfd)
        assert plain.returncode == text.returncode == exits.OK
        assert plain.stdout == text.stdout and not plain.stdout.startswith("{")


def test_an_unknown_study_is_still_one_line_and_its_exit_code(swept, capfd):
    study_file, url = swept
    done = in_process(best.main, [str(study_file), "--storage", url, "--study-name", "nope", "--format", "json"],
                      capfd)
    assert done.returncode == exits.NO_STUDY
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: ")
    done = in_process(studies.main, ["--storage", url + "-missing", "--format", "json"], capfd)
    assert done.returncode == exits.STORAGE and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: ")


def test_no_store_named_is_a_usage_error_in_json_too(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    done = in_process(studies.main, ["--format", "json"], capfd)
    assert done.returncode == exits.USAGE and done.stdout == "" and len(done.stderr.splitlines()) == 1


def test_an_unknown_format_is_a_usage_error(tmp_path, capfd):
    done = in_process(studies.main, ["--storage", f"sqlite:///{tmp_path / 'x.db'}", "--format", "yaml"], capfd)
    assert done.returncode == exits.USAGE and "invalid choice" in done.stderr
