"""`sweeps best` and `sweeps report` on a study with `budget.horizons`: the best trial per horizon,
a horizon's best exported as a dedicated run that trains the value it recorded (bit for bit on the
CPU), and the best value against the compute the sweep spent, per horizon. A real digits sweep in
SQLite; studies without horizons print what they printed before."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from sweeps import best, exits, report, run
from sweeps.trial.record import TrialRecord, consumed, horizons_of
from tests.conftest import TINY

HZ = {
    "study": {"name": "hz", "direction": "maximize", "metric": "val_accuracy", "n_trials": 5, "seed": 0},
    "sampler": {"name": "random"},
    "pruner": {"name": "median", "n_startup_trials": 1},  # prunes at the horizons: pruned trials answer some
    "objective": {"task": "digits_mlp", "optimizer": "sgd", "options": {"hidden": 32}},
    "budget": {"unit": "examples", "per_trial": 4000, "eval_every": 500, "horizons": ["0.25x", "0.5x"]},
    "search": {"batch_size": [32, 64], "base_lr": {"low": 0.02, "high": 0.5, "log": True},
               "coupling": ["none", "sqrt"], "reference_batch_size": 32,
               "warmup_fraction": {"low": 0.0, "high": 0.2}},
}
LENGTHS = [1000, 2000, 4000]


@pytest.fixture(scope="module")
def hz(tmp_path_factory) -> Path:
    """The study file of a finished 5-trial digits sweep with horizons; its store hz.db beside it."""
    folder = tmp_path_factory.mktemp("hz")
    path = folder / "hz.yaml"
    path.write_text(yaml.safe_dump(HZ, sort_keys=False))
    assert run.main([str(path), "--quiet"]) == exits.OK
    return path


def trials_of(path: Path, name: str = "hz") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path.parent / f'{name}.db'}").trials


def table_after(text: str, title: str) -> list[dict[str, str]]:
    """The rows of the table printed under the line starting with `title`, by column."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 1
    header = lines[start].split()
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(dict(zip(header, line.split(), strict=True)))
    return rows


def answers(trials) -> dict[float, list[tuple[float, int, object]]]:
    """Per horizon length: (value, trial number, the horizon's record) of every trial that answered it."""
    out: dict[float, list] = {}
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        for h in horizons_of(TrialRecord.of(t)):
            if h.value is not None and h.stop_reason != "diverged":
                out.setdefault(h.length, []).append((h.value, t.number, h))
    return out


def test_best_lists_the_best_trial_of_each_horizon(hz, capsys):
    assert best.main([str(hz)]) == exits.OK
    printed = capsys.readouterr().out
    complete = [t for t in trials_of(hz) if t.state == TrialState.COMPLETE]
    assert printed.startswith(f"study hz: best {len(complete)} of {len(complete)} finished trials (maximize "
                              "val_accuracy)\n")
    rows = table_after(printed, "best per horizon (examples)")
    assert list(rows[0]) == ["horizon", "fraction", "value", "trial", "batch_size", "lr", "coupling", "updates",
                             "examples", "trials"]
    trials = trials_of(hz)
    found = answers(trials)
    assert sorted(found) == LENGTHS and [int(r["horizon"]) for r in rows] == LENGTHS
    assert [r["fraction"] for r in rows] == ["0.25x", "0.5x", "1x"]
    pruned = {t.number for t in trials if t.state == TrialState.PRUNED}
    assert pruned & {n for _, n, _ in found[1000]}, "a pruned trial answers the horizons it finished"
    for row, length in zip(rows, LENGTHS, strict=True):
        value, number, horizon = max(found[length], key=lambda vn: (vn[0], -vn[1]))
        rec = TrialRecord.of(trials[number])
        assert (int(row["trial"]), row["value"], int(row["trials"])) == (number, f"{value:.4g}", len(found[length]))
        assert (int(row["batch_size"]), row["coupling"]) == (rec.batch_size, rec.coupling)
        assert (int(row["updates"]), int(row["examples"])) == (horizon.updates, horizon.examples)


@pytest.mark.parametrize("horizon", ["0.5x", "1000", "4000"])
def test_a_horizons_export_trains_the_value_it_recorded(hz, horizon, tmp_path, capsys):
    """The best at a horizon, exported with --horizon and run: the same value, curve, updates and
    examples, bit for bit (the longest horizon too, whose export leaves only the horizons out)."""
    out = tmp_path / "short.yaml"
    assert best.main([str(hz), "--export", str(out), "--horizon", horizon]) == exits.OK
    length = {"0.5x": 2000, "1000": 1000, "4000": 4000}[horizon]
    trials = trials_of(hz)
    value, number, recorded = max(answers(trials)[length], key=lambda vn: (vn[0], -vn[1]))
    rec = TrialRecord.of(trials[number])
    assert f"wrote {out}: trains trial {number} again at horizon {length} examples" in capsys.readouterr().out

    data = yaml.safe_load(out.read_text())
    assert data["budget"] == {"unit": "examples", "per_trial": length, "eval_every": 500.0}  # no horizons
    assert data["schedule"]["warmup_updates"] == rec.warmup_updates > 0
    assert data["search"]["warmup_fraction"] == 0.0 and data["search"]["batch_size"] == rec.batch_size
    assert data["search"]["base_lr"] == rec.lr and data["search"]["coupling"] == "none"
    assert data["study"]["training_seed"] == rec.seed and data["pruner"] == {"name": "none"}

    assert run.main([str(out), "--quiet"]) == exits.OK
    name = f"hz-trial{number}-h{length}"
    again = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / f'{name}.db'}").trials
    assert len(again) == 1 and again[0].state == TrialState.COMPLETE
    assert again[0].value == value == recorded.value
    got = TrialRecord.of(again[0])
    assert (got.updates, got.examples_seen) == (recorded.updates, recorded.examples)
    assert again[0].intermediate_values == {int(step): v for step, v in recorded.curve}


def test_export_a_pruned_trials_horizon_with_trial(hz, tmp_path, capsys):
    """--trial N with --horizon: that trial's horizon, here a pruned trial's."""
    trials = trials_of(hz)
    found = answers(trials)
    pruned = {t.number for t in trials if t.state == TrialState.PRUNED}
    value, number, recorded = min((a for a in found[1000] if a[1] in pruned), key=lambda a: a[1])
    out = tmp_path / "p.yaml"
    assert best.main([str(hz), "--export", str(out), "--horizon", "0.25x", "--trial", str(number)]) == exits.OK
    assert run.main([str(out), "--quiet"]) == exits.OK
    name = f"hz-trial{number}-h1000"
    again = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / f'{name}.db'}").trials
    assert again[0].value == value


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_horizon_flag_mistakes_are_one_line_usage_errors(hz, tmp_path, capsys):
    out = str(tmp_path / "x.yaml")
    assert best.main([str(hz), "--export", out, "--horizon", "1500"]) == exits.USAGE
    assert one_line_error(capsys) == ("error: --horizon 1500 is not a horizon of study 'hz': pick one of "
                                      "1000, 2000, 4000 examples (0.25x, 0.5x, 1x)\n")
    assert best.main([str(hz), "--export", out, "--horizon", "soon"]) == exits.USAGE
    assert "is not a horizon of study 'hz'" in one_line_error(capsys)
    assert best.main([str(hz), "--horizon", "0.25x"]) == exits.USAGE
    assert "add --export FILE" in one_line_error(capsys)
    trials = trials_of(hz)
    short = min(t.number for t in trials if len(horizons_of(TrialRecord.of(t))) < 3)  # pruned before 4000
    assert best.main([str(hz), "--export", out, "--horizon", "1x", "--trial", str(short)]) == exits.USAGE
    assert f"--trial {short} answered no horizon 4000 examples" in one_line_error(capsys)
    assert not Path(out).exists()
    capsys.readouterr()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A finished study without horizons."""
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "tiny.yaml"
    data = copy.deepcopy(TINY)
    data["study"]["n_trials"] = 2
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert run.main([str(path), "--quiet"]) == exits.OK
    return path


def test_without_horizons_best_and_report_print_what_they_did(tiny, tmp_path, capsys):
    """(The report's folder name holds 'horizons': look for the section's title, not the word.)"""
    assert best.main([str(tiny), "--export", str(tmp_path / "x.yaml"), "--horizon", "20"]) == exits.USAGE
    assert one_line_error(capsys) == ("error: --horizon 20: study 'tiny' has no budget.horizons; leave --horizon "
                                      "out to export a trial at its own length\n")
    assert best.main([str(tiny), "--export", str(tmp_path / "no" / "x.yaml")]) == exits.USAGE
    assert "cannot write it (No such file or directory): create its folder" in one_line_error(capsys)
    assert best.main([str(tiny)]) == exits.OK
    printed = capsys.readouterr().out
    assert len(printed.splitlines()) == 4 and "horizon" not in printed  # the title, the header, 2 trials
    assert report.main([str(tiny), "--out", str(tmp_path / "rep")]) == exits.OK
    assert "over all horizons" not in capsys.readouterr().out
    assert not (tmp_path / "rep" / "horizons.png").exists()
    assert "horizons" not in json.loads((tmp_path / "rep" / "summary.json").read_text())


def test_report_shows_the_best_value_against_compute_per_horizon(hz, tmp_path, capsys):
    out = tmp_path / "rep"
    assert report.main([str(hz), "--out", str(out)]) == exits.OK
    printed = capsys.readouterr().out
    rows = table_after(printed, "best value against compute over all horizons (spent: the examples")
    trials = trials_of(hz)
    found = answers(trials)
    assert [int(r["horizon"]) for r in rows] == LENGTHS
    summary = json.loads((out / "summary.json").read_text())["horizons"]
    assert [p["length"] for p in summary] == LENGTHS
    so_far = None
    for point, length in zip(summary, LENGTHS, strict=True):
        value, number, _ = max(found[length], key=lambda vn: (vn[0], -vn[1]))
        assert (point["best"], point["trial"], point["finished"]) == (value, number, len(found[length]))
        so_far = value if so_far is None else max(so_far, value)
        assert point["so_far"] == so_far
    spent = [p["spent"] for p in summary]
    assert spent == sorted(spent) and [int(r["spent_examples"]) for r in rows] == spent
    # the shortest horizon: each trial that answered it spent its dedicated run's examples (the run up
    # to the branch, then the branch); one that stopped before it, all it trained
    answered_first = {n: h for _, n, h in found[1000]}
    assert spent[0] == sum(answered_first[t.number].examples if t.number in answered_first
                           else consumed(t, "examples") for t in trials)
    assert spent[-1] == sum(consumed(t, "examples") for t in trials)  # the longest: all the sweep spent
    assert (out / "horizons.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'id="horizons"' in (out / "report.html").read_text()
