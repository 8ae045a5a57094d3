"""The out-of-memory path, driven by injected real `torch.cuda.OutOfMemoryError`s on the CPU."""

from __future__ import annotations

import optuna
import pytest
import torch

from objectives.task import Task, TrialSettings
from objectives.tasks.digits import digits_mlp
from objectives.tasks.faults import OutOfMemoryAbove
from objectives.tasks.regression import regression
from objectives.training.budget import Budget, plan_trial
from objectives.training.loop import Trainer
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule
from sweeps import probe
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.loop.runner import run_sweep
from sweeps.trial.record import PROBED_MICRO_BATCH_ATTR


def regression_task(seed: int = 3) -> Task:
    torch.manual_seed(seed)
    return regression(TrialSettings(64, 0.05, seed, torch.device("cpu"), options={"dim": 8}))


def train_regression(oom_limit: int | None) -> tuple[Trainer, Task]:
    task = regression_task()
    if oom_limit is not None:
        task.model = OutOfMemoryAbove(task.model, oom_limit)
    budget = Budget("updates", 60, 20)
    plan = plan_trial(budget, len(task.train[0]), 64)
    schedule = Schedule.build(0.05, plan.planned_updates, 0.1, "cosine", 0.0)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.05, momentum=0.9)
    trainer = Trainer(task, optimizer, schedule, plan, budget, TrainerOptions(maximize=False), seed=11)
    trainer.train()
    return trainer, task


def inner_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model = model.model if isinstance(model, OutOfMemoryAbove) else model
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_oom_halves_micro_batch_and_keeps_the_update():
    free, free_task = train_regression(None)
    capped, capped_task = train_regression(10)
    assert free.result.accumulation_steps == 1 and free.result.micro_batch == 64
    assert capped.result.accumulation_steps == 8  # 64 -> 32 -> 16 -> 8 examples per micro-batch
    assert capped.result.micro_batch == 8
    assert capped.result.updates == free.result.updates == 60
    assert capped.result.examples_seen == free.result.examples_seen
    assert capped.result.stop_reason == free.result.stop_reason == "budget"
    assert [s for s, _ in capped.result.history] == [s for s, _ in free.result.history]
    assert [v for _, v in capped.result.history] == pytest.approx([v for _, v in free.result.history], rel=1e-4)
    for name, weight in inner_weights(free_task.model).items():
        torch.testing.assert_close(inner_weights(capped_task.model)[name], weight, rtol=1e-4, atol=1e-5)


def test_micro_batch_of_one_that_does_not_fit_stops_with_oom():
    trainer, _ = train_regression(0)
    assert trainer.result.stop_reason == "oom"
    assert trainer.result.updates == 0


def digits_oom_factory(settings: TrialSettings) -> Task:
    """digits_mlp whose batches of 64 or more 'do not fit' above options.oom_above examples."""
    task = digits_mlp(settings)
    if settings.batch_size >= 64:
        task.model = OutOfMemoryAbove(task.model, int(settings.options["oom_above"]))
    return task


def oom_config(tmp_path, oom_above: int, n_trials: int = 4):
    return parse_config({
        "study": {"name": "oom", "metric": "val_accuracy", "n_trials": n_trials, "seed": 1,
                  "max_failures": 20},
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "objective": {"task": "tests.test_oom:digits_oom_factory", "options": {"oom_above": oom_above}},
        "budget": {"unit": "updates", "per_trial": 30, "eval_every": 10},
        "search": {"batch_size": [16, 64], "base_lr": 0.05},
    }, tmp_path)


def test_sweep_recovers_from_oom_and_records_micro_batches(tmp_path):
    config = oom_config(tmp_path, oom_above=20, n_trials=6)
    study = run_sweep(config, target_of(config), show_progress=False)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 6
    by_batch = {t.user_attrs["batch_size"]: t.user_attrs for t in trials}
    assert set(by_batch) == {16, 64}
    assert (by_batch[64]["micro_batch"], by_batch[64]["accumulation_steps"]) == (16, 4)
    assert (by_batch[16]["micro_batch"], by_batch[16]["accumulation_steps"]) == (16, 1)
    assert by_batch[64]["updates"] == by_batch[64]["planned_updates"] == 30


def test_sweep_goes_on_when_one_example_does_not_fit(tmp_path):
    config = oom_config(tmp_path, oom_above=0, n_trials=3)
    study = run_sweep(config, target_of(config), show_progress=False)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3 and {t.user_attrs["batch_size"] for t in complete} == {16}
    assert failed and all(t.user_attrs["stop_reason"] == "oom" for t in failed)
    assert all("does not fit" in t.user_attrs["error"] for t in failed)
    assert all(t.user_attrs["batch_size"] == 64 for t in failed)


def test_probe_finds_the_limit_and_sweeps_start_from_it(tmp_path, capsys, monkeypatch):
    # what is checked is where the OOM starts, not the speeds: each size is timed over two samples (the
    # timing to 5% over 20 updates, against a 2 s cap per size, is the next test's, a real probe)
    for name, value in (("TARGET_RSE", 1.0), ("MIN_SAMPLES", 2), ("MIN_UPDATES", 1)):
        monkeypatch.setattr(probe, name, value)
    config = oom_config(tmp_path, oom_above=37, n_trials=2)
    config.search.batch_size = [64]
    study_file = tmp_path / "oom.yaml"
    study_file.write_text(
        "study: {name: oom, metric: val_accuracy, n_trials: 2, seed: 1}\n"
        "sampler: {name: random}\npruner: {name: none}\n"
        "objective: {task: 'tests.test_oom:digits_oom_factory', options: {oom_above: 37}}\n"
        "budget: {unit: updates, per_trial: 30, eval_every: 10}\n"
        "search: {batch_size: [16, 64], base_lr: 0.05}\n"
    )
    assert probe.main([str(study_file), "--margin", "0.1"]) == 0
    printed = capsys.readouterr().out
    assert "largest micro-batch that fits: 37" in printed
    assert "OOM" in printed
    stored = optuna.load_study(study_name="oom", storage=f"sqlite:///{tmp_path}/oom.db")
    assert stored.user_attrs[PROBED_MICRO_BATCH_ATTR] == {"cpu": 33}  # 37 less the 10% margin, per device model
    config = oom_config(tmp_path, oom_above=37, n_trials=2)
    study = run_sweep(config, target_of(config), show_progress=False)
    big = [t for t in study.trials if t.user_attrs.get("batch_size") == 64]
    assert big, "the sweep must train a batch of 64 for the check below to mean anything"
    for t in big:  # started split: 64 -> 2 micro-batches of 32, no OOM needed
        assert (t.user_attrs["micro_batch"], t.user_attrs["accumulation_steps"]) == (32, 2)


def test_probe_plateau_and_bisection_order():
    tried = [probe.Measurement(1, True, 100), probe.Measurement(2, True, 190),
             probe.Measurement(4, True, 200), probe.Measurement(8, False)]
    assert probe.plateau(tried) == 2
    assert probe.largest_fit(tried) == 4
    # a dip between two small sizes is no plateau while a larger size in the table is far faster
    noisy = [probe.Measurement(1, True, 100), probe.Measurement(2, True, 105), probe.Measurement(4, True, 400),
             probe.Measurement(512, True, 35000)]
    assert probe.plateau(noisy) is None
    assert probe.plateau([*noisy, probe.Measurement(1024, True, 36000)]) == 512


def test_probe_times_each_size_until_its_speed_is_known_and_its_verdict_reads_its_table(tmp_path):
    """A real probe in a subprocess: each size timed over at least 20 updates until the relative
    standard error of its examples/s is under 5% (or the time cap, marked); the stated knee is one
    the printed table bears out; no Optuna log line."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from tests.conftest import TINY, merged

    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(merged(TINY, {"search": {"batch_size": [1, 64]}})))
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "sweeps.probe", str(study)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "[I " not in done.stdout, done.stderr
    lines = done.stdout.splitlines()
    header = lines[1].split()
    assert header[:5] == ["micro_batch", "fits", "examples/s", "se%", "updates"], lines[1]
    rows = [dict(zip(header, line.replace("*", " ").split())) for line in lines[2:] if line[:11].strip().isdigit()]
    assert [int(r["micro_batch"]) for r in rows] == [1, 2, 4, 8, 16, 32, 64]
    for r, line in zip(rows, lines[2:]):
        assert int(r["updates"]) >= 20 or line.endswith("*"), line
        assert float(r["se%"]) <= 100 * probe.TARGET_RSE or line.endswith("*"), line  # printed rounded
    speed = {int(r["micro_batch"]): float(r["examples/s"]) for r in rows}
    verdict = next(line for line in lines if "throughput" in line)
    if "still grows" in verdict:  # then every size has a faster one (by 10%) above it
        assert all(max(v for b, v in speed.items() if b > s) >= probe.PLATEAU_GAIN * speed[s]
                   for s in speed if s < 64), (speed, verdict)
    else:
        knee = int(verdict.split("~")[1].split()[0].rstrip(":"))
        assert all(v < probe.PLATEAU_GAIN * speed[knee] for b, v in speed.items() if b > knee), (speed, verdict)
