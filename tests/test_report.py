"""The report, the runner's dashboard notes and plots, and the kept checkpoints, on a real sweep."""

from __future__ import annotations

import json
import math
import sqlite3
import warnings
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects
from optuna_dashboard._note import get_note_from_system_attrs

from objectives.registry import resolve_task
from objectives.task import TrialSettings
from storage.optuna_private import study_id_of, study_storage, trial_id_of
from sweeps import report
from sweeps.results.analysis import analyse
from sweeps.results.figures import build_figures
from sweeps.results.lr_advice import LrPoint, fit_lr_scaling
from sweeps.trial.checkpoints import kept_checkpoints
from tests.dashboard_study import STUDY, make_study

PNGS = ["best_by_batch_size", "lr_scaling", "steps_to_target", "learning_curves", "importances", "budget_plan",
        "pareto_examples", "pareto_seconds", "report"]


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("report"))


def load(study_file: Path) -> optuna.Study:
    return optuna.load_study(study_name="digits-small", storage=f"sqlite:///{study_file.parent / 'small.db'}")


def test_report_writes_html_pngs_and_summary(study_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.main([str(study_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    study = load(study_file)
    best = study.best_trial
    a = analyse(study)
    assert f"{best.value:.4g}" in printed and a.lr_fit.sentence() in printed
    head = printed.splitlines()[:4]  # the short answer, before any reasoning
    assert [line.split(" ")[0] for line in head] == ["Train:", "Expect:", "Caveat:", "Next:"], printed
    assert head[0].startswith(f"Train:   batch size {best.user_attrs['batch_size']}, peak LR ")
    assert head[1].startswith(f"Expect:  {a.metric} ") and ("+/-" in head[1] or "no spread" in head[1])
    assert head[2] == f"Caveat:  the best of {len(a.complete)} trials is optimistic until confirmation runs repeat it"
    assert head[3] == f"Next:    sweeps confirm {study_file}"
    assert printed.splitlines()[4] == "" and printed.splitlines()[5].startswith("Why: ")
    for name in PNGS:
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    page = (out / "report.html").read_text()
    for div in ("best-by-batch-size", "lr-scaling", "steps-to-target", "learning-curves", "importances",
                "budget-plan", "pareto-examples", "pareto-seconds"):
        assert f'id="{div}"' in page
    summary = json.loads((out / "summary.json").read_text())
    couplings = {t.user_attrs["coupling"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert set(summary["best_by_batch_size"]) == couplings
    assert summary["best_trials"][0]["trial"] == best.number
    assert summary["lr_scaling"]["verdict"] == a.lr_fit.verdict()
    assert summary["lr_scaling"]["batch_sizes"] == a.lr_fit.batch_sizes
    assert summary["steps_to_target"], "the best trial reaches the 90th percentile, so some batch size does"


def test_figures_hold_the_right_series(study_file):
    study = load(study_file)
    a = analyse(study)
    figures = build_figures(a, None)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the median pruner pruned some trials of this sweep"
    assert complete, "and some trials of this sweep completed"

    best = [t for t in figures["best-by-batch-size"]["data"] if t["name"] in a.best_by_batch]
    beyond = [t for t in figures["best-by-batch-size"]["data"] if t["name"].startswith("beyond the axis")]
    clipped = {(x, v) for t in beyond for x, (v, _) in zip(t["x"], t["customdata"])}
    for trace in best:  # one series per coupling rule: the best value at each batch size
        rule_trials = [t for t in complete if t.user_attrs["coupling"] == trace["name"]]
        assert trace["x"] and len(trace["x"]) == len(trace["y"]), trace["name"]
        for b, v in zip(trace["x"], trace["y"]):
            values = [t.value for t in rule_trials if t.user_attrs["batch_size"] == b]
            if v is None:  # a gap: no finished trial there, or its value lies beyond the axis (drawn at the edge)
                assert not values or (b, max(values)) in clipped
            else:
                assert v == max(values)
    assert {t["name"] for t in best} == {t.user_attrs["coupling"] for t in complete}

    curves = [c for c in figures["learning-curves"]["data"] if "meta" in c]  # less the legend entries
    assert len(curves) == len([t for t in trials if t.intermediate_values])
    by_trial = {c["meta"]["trial"]: c for c in curves}
    for t in pruned:
        assert by_trial[t.number]["opacity"] < 0.5 and by_trial[t.number]["x"] == sorted(t.intermediate_values)
    for t in complete:
        assert by_trial[t.number]["opacity"] > 0.5
    steps = {x for c in curves for x in c["x"]}
    assert steps and steps <= {1500, 3000, 4500, 6000}, "every trial reports on the one budget grid"

    target = figures["steps-to-target"]
    assert target["layout"]["xaxis"]["type"] == "log" and target["layout"]["yaxis"]["type"] == "log"
    assert [t["name"] for t in target["data"]][:2] == ["updates to target", "perfect scaling (updates ~ 1/B)"]
    lr = figures["lr-scaling"]["data"]
    assert lr[0]["x"] == a.lr_fit.batch_sizes
    assert a.lr_fit.slope is None or lr[1]["name"].startswith("fit: B^")


def test_runner_writes_notes_plots_and_keeps_best_checkpoints(study_file):
    study = load(study_file)
    system = study_storage(study).get_study_system_attrs(study_id_of(study))
    note = get_note_from_system_attrs(system, None)["body"]
    assert "Plan of the budget" in note and "| batch_size |" in note and "Budget spent" in note
    assert "digits_mlp" in note  # the resolved study file
    for t in study.trials:
        body = get_note_from_system_attrs(system, trial_id_of(t))["body"]
        assert f"## Trial {t.number}" in body and f"| batch size | {t.user_attrs['batch_size']} |" in body
    plots = get_plotly_graph_objects(system)
    assert {"sweeps-best-by-batch-size", "sweeps-lr-scaling", "sweeps-steps-to-target", "sweeps-learning-curves",
            "sweeps-budget-plan", "sweeps-pareto-examples", "sweeps-pareto-seconds"} <= set(plots)
    assert json.loads(plots["sweeps-lr-scaling"])["data"]

    kept = kept_checkpoints(study)
    values = sorted((t.value for t in study.trials if t.state == TrialState.COMPLETE), reverse=True)
    assert [k.value for k in kept] == values[:3]
    folder = study_file.parent / "small-artifacts"
    assert sorted(p.name for p in folder.iterdir()) == sorted(k.artifact_id for k in kept), "evicted files deleted"
    # the kept weights are the trial's best: they score the trial's value on the validation set again
    checkpoint = torch.load(folder / kept[0].artifact_id)
    task = resolve_task("digits_mlp")(TrialSettings(batch_size=16, lr=0.1, seed=0, device=torch.device("cpu"),
                                                    options={"hidden": 32}))
    task.model.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        score = float(task.metric(task.model(task.val[0]), task.val[1]))
    assert score == pytest.approx(kept[0].value, abs=1e-6)
    assert checkpoint["settings"]["batch_size"] == study.trials[kept[0].number].user_attrs["batch_size"]


def synthetic_study(path: Path, exponent: float) -> optuna.Study:
    """Trials whose best LR at each batch size is exactly 0.01 * (B / 16) ** exponent."""
    study = optuna.create_study(study_name="synthetic", storage=f"sqlite:///{path}", direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_accuracy"])
    study.set_user_attr("budget_unit", "updates")
    study.set_user_attr("step_unit", "updates")
    for b in (16, 32, 64, 128, 256, 512, 1024):
        best_lr = 0.01 * (b / 16) ** exponent
        for factor in (0.25, 0.5, 1.0, 2.0, 4.0):
            lr = best_lr * factor
            value = 0.9 - 0.05 * math.log(factor) ** 2
            study.add_trial(create_trial(
                params={"batch_size": b, "lr_factor": factor}, value=value,
                distributions={"batch_size": IntDistribution(16, 1024, log=True),
                               "lr_factor": FloatDistribution(0.25, 4.0, log=True)},
                user_attrs={"batch_size": b, "lr": lr, "coupling": "none", "updates": 1000},
                intermediate_values={500: value - 0.1, 1000: value}))
    return study


@pytest.mark.parametrize("exponent", [1.0, 0.5])
def test_fitted_slope_recovers_the_lr_scaling(tmp_path, exponent, capsys):
    study = synthetic_study(tmp_path / "synthetic.db", exponent)
    fit = analyse(study, with_importances=False).lr_fit
    assert fit.batch_sizes == [16, 32, 64, 128, 256, 512, 1024]
    assert abs(fit.slope - exponent) < 0.1
    assert fit.half_width is not None and fit.half_width < 0.1
    rule = {1.0: "linear", 0.5: "sqrt"}[exponent]
    assert fit.rule == rule

    # and through the command, from a study file naming that store; factors 0.5 and 2 (0.024 below) are good too
    config = yaml.safe_load(yaml.safe_dump(STUDY))
    config["study"].update(name="synthetic", storage="sqlite:///synthetic.db")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    assert report.main([str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--tolerance", "0.03"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Train:   batch size ")
    assert f"When you change batch size, scale the LR with the {rule} rule" in printed.replace("\n", " ")
    assert "good trials: within 0.03 of their batch size's best" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert abs(summary["lr_scaling"]["slope"] - exponent) < 0.1 and summary["lr_scaling"]["rule"] == rule
    answer, why = printed.split("\n\n")[:2]
    assert [f"{key.title()}:".ljust(9) + text for key, text in summary["answer"].items()] == answer.splitlines()
    assert summary["recommendation"].endswith(why.removeprefix("Why: ").replace("\n", " "))


def test_slope_confidence_interval_widens_with_noise():
    exact = fit_lr_scaling([LrPoint(b, 0.01 * b ** 0.5, 0.9, i) for i, b in enumerate((16, 64, 256, 1024))])
    noisy = fit_lr_scaling([LrPoint(b, 0.01 * b ** 0.5 * f, 0.9, i) for i, (b, f) in
                            enumerate(zip((16, 64, 256, 1024), (1.5, 0.7, 1.4, 0.8)))])
    assert exact.half_width == pytest.approx(0, abs=1e-9) and noisy.half_width > 0.05
    assert fit_lr_scaling([LrPoint(16, 0.1, 0.9, 0)]).slope is None
    assert fit_lr_scaling([LrPoint(16, 0.1, 0.9, 0), LrPoint(32, 0.2, 0.9, 1)]).half_width is None


def write_file(folder: Path, **study) -> Path:
    config = yaml.safe_load(yaml.safe_dump(STUDY))
    config["study"].update(study)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_clear_messages_instead_of_tracebacks(tmp_path, capsys):
    path = write_file(tmp_path, storage="sqlite:///missing.db")
    assert report.main([str(path)]) == 3
    assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists(), "the report creates no store"

    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 100)
    path = write_file(tmp_path, storage="sqlite:///garbage.db")
    assert report.main([str(path)]) == 3
    assert "cannot" in capsys.readouterr().err

    storage = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(study_name="someone-else", storage=storage)
    path = write_file(tmp_path, storage="sqlite:///other.db")
    assert report.main([str(path)]) == 4
    err = capsys.readouterr().err
    assert "no study 'digits-small'" in err and "someone-else" in err

    study = optuna.create_study(study_name="digits-small", storage=storage, direction="maximize")
    study.add_trial(create_trial(state=TrialState.PRUNED, params={}, distributions={}))
    assert report.main([str(path)]) == 1
    assert "no finished trial" in capsys.readouterr().err

    (tmp_path / "bad.yaml").write_text("study: {name: x}\n")
    assert report.main([str(tmp_path / "bad.yaml")]) == 2
    with sqlite3.connect(tmp_path / "other.db") as db:  # untouched by the failed reads
        assert db.execute("select count(*) from studies").fetchone()[0] == 2


def test_read_commands_use_the_config_the_study_ran_with(tmp_path, capsys):
    """A study run with `--set budget.per_trial=20` is planned and shown with 20, not the file's 40,
    by every read command, each saying in one line that the file on disk differs."""
    from sweeps import best, run
    from tests.conftest import TINY

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "study": {**TINY["study"], "n_trials": 2}}))
    assert run.main([str(path), "--quiet", "--set", "budget.per_trial=20"]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    assert report.main([str(path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert [row["updates"] for row in summary["budget_plan"]] == [20, 20]
    assert (out / "budget_plan.png").is_file()
    note = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "budget.per_trial" in note[0] and "--set budget.per_trial=20" in note[0], err
    assert best.main([str(path)]) == 0
    assert "budget.per_trial" in capsys.readouterr().err

    path.write_text(yaml.safe_dump({**TINY, "study": {**TINY["study"], "n_trials": 2},
                                    "budget": {**TINY["budget"], "per_trial": 20}}))
    assert report.main([str(path), "--out", str(out)]) == 0
    assert "note:" not in capsys.readouterr().err, "the file now says what the study ran with"


def test_a_loader_default_that_follows_the_environment_is_no_difference(tmp_path, capsys, monkeypatch):
    """`objective.loader.workers` defaults to the cores the run had (OMP_NUM_THREADS=1 there: 0 loader
    workers); read where it defaults otherwise, the study is not said to differ from its file."""
    from sweeps import run
    from tests.conftest import TINY

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "study": {**TINY["study"], "n_trials": 1}}))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert run.main([str(path), "--quiet"]) == 0
    stored = optuna.load_study(study_name=TINY["study"]["name"], storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    from objectives.training.cores import default_loader_workers

    if stored.user_attrs["config"]["objective"]["loader"]["workers"] == default_loader_workers():
        pytest.skip("one core: the default is 0 loader workers either way")
    capsys.readouterr()
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    assert "note:" not in capsys.readouterr().err
