"""One step for the trials, the seconds budget's timing and `sweeps probe`
(objectives/training/step.py): each runs the study's precision, compiled model and micro-batches."""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from objectives.task import TrialSettings
from objectives.tasks.regression import regression
from objectives.training.loop import measure_seconds_per_update
from objectives.training.step import Step, TrainState
from sweeps import probe

CPU = torch.device("cpu")


def spy_on_steps(monkeypatch) -> list[tuple[Step, TrainState, int]]:
    """Every call of `Step`: the step, the state it trained, the batch's length and whether its
    forward runs under bf16 autocast."""
    calls = []
    original = Step.__call__

    def recorded(self, state, batch):
        bf16 = isinstance(self.autocast, torch.autocast) and self.autocast.fast_dtype == torch.bfloat16
        calls.append((self, state, len(batch[0]), bf16))
        return original(self, state, batch)

    monkeypatch.setattr(Step, "__call__", recorded)
    return calls


def test_the_probe_measures_with_the_trials_step_precision_and_compiled_model(tmp_path, monkeypatch, capsys):
    compiled = []

    def fake_compile(model):  # torch.compile itself is slow on a CPU test; that it is called is the point
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    calls = spy_on_steps(monkeypatch)
    study_file = tmp_path / "probe.yaml"
    study_file.write_text(
        "study: {name: probe, metric: val_mse, direction: minimize, n_trials: 1}\n"
        "objective: {task: regression, optimizer: sgd, precision: bf16, compile: true,\n"
        "            options: {dim: 4, n_train: 64, n_val: 16}}\n"
        "budget: {unit: updates, per_trial: 10}\nsearch: {batch_size: [8], base_lr: 0.05}\n")
    assert probe.main([str(study_file), "--no-store"]) == 0
    assert "micro_batch" in capsys.readouterr().out
    assert len(compiled) == 1 and calls, "the probe compiles the model as a trial does, then steps"
    for step, state, _, autocast in calls:
        assert autocast, "every measured update runs under the trial's bf16 autocast"
        assert state.model is compiled[0] and step.accumulation == 1  # one micro-batch of the size measured
    assert {n for *_, n, _ in calls} == {1, 2, 4, 8}


def test_the_seconds_budget_times_the_trials_step(monkeypatch):
    calls = spy_on_steps(monkeypatch)
    task = regression(TrialSettings(64, 0.05, 0, CPU, options={"dim": 4, "n_train": 64, "n_val": 16}))
    seconds = measure_seconds_per_update(task, lambda params: torch.optim.SGD(params, lr=0.01), 32, updates=3,
                                         precision="bf16", max_micro_batch=8)
    assert seconds > 0 and len(calls) == 4
    assert all(step.accumulation == 4 and autocast for step, _, _, autocast in calls)  # 32 = 4 x 8, under bf16
    assert all(state.model is not task.model for _, state, _, _ in calls), "a throwaway copy trains"


def test_the_seconds_budget_times_the_tasks_augment_with_each_update():
    """An augment's time is part of every update a seconds budget pays for: timed without it, a
    trial planned more updates than its seconds hold, and the cap ended it before its decay."""
    task = regression(TrialSettings(16, 0.05, 0, CPU, options={"dim": 4, "n_train": 64, "n_val": 16}))
    seen = []

    def slow(batch, generator):
        seen.append(generator)
        time.sleep(0.02)
        return batch

    def per_update(augment) -> float:
        return measure_seconds_per_update(replace(task, augment=augment),
                                          lambda params: torch.optim.SGD(params, lr=0.01), 16, updates=3)

    assert per_update(None) < 0.02 <= per_update(slow)
    assert len(seen) == 4 and len({id(g) for g in seen}) == 1  # every update, one throwaway generator


class OutOfMemoryAbove(torch.nn.Module):
    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.linear = limit, torch.nn.Linear(2, 1)

    def forward(self, x):
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("simulated")
        return self.linear(x)


def test_within_memory_halves_the_micro_batch_until_it_fits():
    model = OutOfMemoryAbove(3)
    task = type("T", (), {"loss": staticmethod(torch.nn.functional.mse_loss), "target_key": "labels"})()
    step = Step(task, CPU)
    state = TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1))
    loss = step.within_memory(state, (torch.ones(12, 2), torch.zeros(12, 1)))
    assert step.accumulation == 4 and loss.ndim == 0  # 12 -> 6 -> 3 per micro-batch
