"""Real training workloads: a Dataset instead of tensors, dict batches, augmentation, tokens.

Real training on tiny data, no mocks. Each Dataset here holds the same rows as a tensor pair, so
what the trainer did on it (updates, examples, evaluation steps, even the values: on the CPU the
Dataset path draws the tensor path's permutation) is checked against the tensor path's.
The factories at the bottom are tasks for whole sweeps (`objective.task: tests.test_datasets:NAME`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import Dataset

from objectives.task import Task, TrialSettings, negative_mse
from objectives.tasks.faults import OutOfMemoryAbove
from objectives.training.batches import split
from objectives.training.budget import Budget, plan_trial
from objectives.training.cores import cores_per_worker, default_loader_workers
from objectives.training.data import LoaderOptions
from objectives.training.loop import Trainer
from objectives.training.options import EarlyStopping, TrainerOptions
from objectives.training.schedule import Schedule
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.errors import ConfigError
from sweeps.loop.runner import run_sweep
from sweeps.report import main as report_main
from sweeps.run import main

N, N_VAL, DIM = 50, 20, 4
TASKS = "tests.test_datasets"


def rows(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=gen)
    y = x @ torch.arange(1.0, DIM + 1).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=gen)
    return x, y


def mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((pred - y) ** 2).mean()


class Pairs(Dataset):
    """The tensor pair as a map-style Dataset; records which rows it was asked for."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.asked: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.asked.append(i)
        return self.x[i], self.y[i]


def linear_task(as_dataset: bool, seed: int = 0, **fields) -> Task:
    torch.manual_seed(seed)
    (x, y), (xv, yv) = rows(N, 0), rows(N_VAL, 1)
    train = Pairs(x, y) if as_dataset else (x, y)
    val = Pairs(xv, yv) if as_dataset else (xv, yv)
    return Task(nn.Linear(DIM, 1), train, val, mse, negative_mse, **fields)


def trainer_for(task: Task, budget: Budget, batch_size: int, *, seed: int = 7, drop_last: bool = False,
                loader: LoaderOptions | None = None, lr: float = 0.05, **kwargs) -> Trainer:
    plan = plan_trial(budget, task.n_train, batch_size, drop_last=drop_last)
    schedule = Schedule.build(lr, plan.planned_updates, 0.0, "constant", 1.0)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=lr)
    options = TrainerOptions(maximize=True, loader=loader or LoaderOptions(workers=0), **kwargs)
    return Trainer(task, optimizer, schedule, plan, budget, options, seed=seed)


# --- counting on a Dataset ----------------------------------------------------------------------

@pytest.mark.parametrize("drop_last, per_epoch", [(False, math.ceil(N / 16)), (True, N // 16)])
def test_a_dataset_counts_as_the_same_rows_as_tensors(drop_last, per_epoch):
    budget = Budget("epochs", 3, 1)
    tensors = trainer_for(linear_task(False), budget, 16, drop_last=drop_last).train()
    dataset = trainer_for(linear_task(True), budget, 16, drop_last=drop_last).train()
    epoch_examples = N if not drop_last else per_epoch * 16
    assert dataset.updates == tensors.updates == 3 * per_epoch
    assert dataset.examples_seen == tensors.examples_seen == 3 * epoch_examples
    assert [s for s, _ in dataset.history] == [s for s, _ in tensors.history] == [N, 2 * N, 3 * N]
    assert [v for _, v in dataset.history] == pytest.approx([v for _, v in tensors.history], rel=1e-5)


def test_a_dataset_with_worker_processes_counts_the_same_and_stops_early_the_same():
    budget = Budget("updates", 40, 4)
    rule = EarlyStopping(patience=2, min_delta=10.0)  # a large min_delta: stops well before the budget
    tensors = trainer_for(linear_task(False), budget, 8, early_stopping=rule).train()
    loaded = trainer_for(linear_task(True), budget, 8, early_stopping=rule,
                         loader=LoaderOptions(workers=2, prefetch=3)).train()
    assert tensors.stop_reason == loaded.stop_reason == "early_stopping"
    assert loaded.updates == tensors.updates < 40
    assert loaded.examples_seen == tensors.examples_seen
    assert [s for s, _ in loaded.history] == [s for s, _ in tensors.history] == list(range(4, tensors.updates + 1, 4))
    assert [v for _, v in loaded.history] == pytest.approx([v for _, v in tensors.history], rel=1e-5)


def test_shuffling_is_seeded_from_the_trial_seed():
    def order(seed: int) -> list[int]:
        task = linear_task(True)
        trainer_for(task, Budget("epochs", 2, 2), 10, seed=seed).train()
        return task.train.asked

    first, again, other = order(5), order(5), order(6)
    assert len(first) == 2 * N
    assert first == again
    assert first != other
    assert first[:N] != first[N:]  # each epoch draws a fresh order
    assert sorted(first[:N]) == list(range(N))  # and an epoch sees every row once


# --- dict batches, a Hugging Face-style model ---------------------------------------------------

@dataclass
class ModelOutput:
    logits: torch.Tensor


class TinyLM(nn.Module):
    """`forward(input_ids, attention_mask)` as a Hugging Face model: keyword arguments in,
    an output with `.logits` out. Predicts one class per sequence from its masked mean embedding."""

    def __init__(self, vocab: int = 16, classes: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ModelOutput:
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return ModelOutput(self.head(pooled))


class Sequences(Dataset):
    """Dict examples: input_ids, attention_mask, labels (the class: the first token mod 3)."""

    def __init__(self, n: int, seq: int = 6, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 16, (n, seq), generator=gen)
        lengths = torch.randint(2, seq + 1, (n,), generator=gen)
        self.mask = (torch.arange(seq) < lengths.unsqueeze(1)).long()
        self.labels = self.ids[:, 0] % 3

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def lm_loss(out: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out.logits, labels)


def lm_accuracy(out: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
    return (out.logits.argmax(1) == labels).float().mean()


def lm_task(seed: int = 0, oom_limit: int | None = None) -> Task:
    torch.manual_seed(seed)
    model = TinyLM() if oom_limit is None else OutOfMemoryAbove(TinyLM(), oom_limit)
    return Task(model, Sequences(64, seed=0), Sequences(24, seed=1), lm_loss, lm_accuracy, tokens_per_example=6)


def inner(model: nn.Module) -> dict[str, torch.Tensor]:
    model = model.model if isinstance(model, OutOfMemoryAbove) else model
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_split_cuts_every_tensor_of_a_dict_along_dim_0():
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "labels": torch.arange(5)}
    parts = split(batch, 2)
    assert [p["labels"].tolist() for p in parts] == [[0, 1, 2], [3, 4]]
    assert [p["input_ids"].shape[0] for p in parts] == [3, 2]


def lm_run(**kwargs) -> tuple[Trainer, Task]:
    task = lm_task(oom_limit=kwargs.pop("oom_limit", None))
    trainer = trainer_for(task, Budget("updates", 12, 4), 16, lr=0.5, **kwargs)
    trainer.train()
    return trainer, task


def test_dict_batches_micro_batched_give_the_same_training_as_the_full_batch():
    full, full_task = lm_run()
    split_, split_task = lm_run(max_micro_batch=4)
    assert (full.result.accumulation_steps, split_.result.accumulation_steps) == (1, 4)
    assert split_.result.micro_batch == 4
    assert split_.result.updates == full.result.updates == 12
    assert [s for s, _ in split_.result.history] == [s for s, _ in full.result.history] == [4, 8, 12]
    assert [v for _, v in split_.result.history] == pytest.approx([v for _, v in full.result.history], abs=1e-6)
    assert split_.result.last_train_loss == pytest.approx(full.result.last_train_loss, rel=1e-4)
    for name, weight in inner(full_task.model).items():
        torch.testing.assert_close(inner(split_task.model)[name], weight, rtol=1e-4, atol=1e-5)


def test_dict_batches_recover_from_out_of_memory_with_the_same_update():
    free, free_task = lm_run()
    capped, capped_task = lm_run(oom_limit=5)
    assert capped.result.stop_reason == free.result.stop_reason == "budget"
    assert capped.result.accumulation_steps == 4  # 16 -> 8 -> 4 examples per micro-batch
    assert capped.result.micro_batch == 4
    assert capped.result.examples_seen == free.result.examples_seen == 12 * 16
    assert [v for _, v in capped.result.history] == pytest.approx([v for _, v in free.result.history], abs=1e-6)
    for name, weight in inner(free_task.model).items():
        torch.testing.assert_close(inner(capped_task.model)[name], weight, rtol=1e-4, atol=1e-5)


def test_a_dict_example_without_the_target_key_is_rejected_naming_it():
    task = lm_task()
    task.target_key = "label"
    with pytest.raises(ValueError, match="target key 'label'"):
        task.validate()
    lm_task().validate()  # the right key passes


# --- augmentation: training batches only ----------------------------------------------------------

MARK = 1000.0


class Watch(nn.Module):
    """A linear model that records the largest input it saw in training and in evaluation."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(DIM, 1)
        self.train_max, self.eval_max = [], []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (self.train_max if self.training else self.eval_max).append(x.abs().max().item())
        return self.linear(x / MARK) if self.training else self.linear(x)


@pytest.mark.parametrize("as_dataset", [False, True])
def test_augment_marks_every_training_batch_and_never_an_evaluation(as_dataset):
    calls, draws = [], []

    def augment(batch, generator):
        x, y = batch
        assert isinstance(generator, torch.Generator)
        draws.append(torch.rand((), generator=generator, device=generator.device).item())
        calls.append(len(x))
        return x + MARK, y  # every input moved far out of the data's range

    task = linear_task(as_dataset, augment=augment)
    task.model = Watch()
    result = trainer_for(task, Budget("updates", 9, 3), 16).train()
    assert len(calls) == result.updates == 9
    assert sum(calls) == result.examples_seen
    assert min(task.model.train_max) > MARK / 2  # the model trained on augmented batches only
    assert len(task.model.eval_max) == 3 * math.ceil(N_VAL / 4096)  # three evaluations
    assert max(task.model.eval_max) < MARK / 2  # and evaluated on plain data
    first = list(draws)
    draws.clear()
    again = linear_task(as_dataset, augment=augment)
    again.model = Watch()
    trainer_for(again, Budget("updates", 9, 3), 16).train()
    assert draws == first  # the augmentation's generator is seeded from the trial seed
    draws.clear()
    other = linear_task(as_dataset, augment=augment)
    other.model = Watch()
    trainer_for(other, Budget("updates", 9, 3), 16, seed=8).train()
    assert draws != first


# --- tokens ------------------------------------------------------------------------------------

def test_tokens_budget_arithmetic():
    budget = Budget("tokens", 6 * 100, 6 * 30, tokens_per_example=6)
    assert budget.updates_cap(64, 16, False) == 6  # 100 examples: 64 + 32, 2 batches short of epoch 2's end
    plan = plan_trial(budget, 64, 16)
    assert plan.planned_examples == 96 and plan.planned_tokens == 576
    assert budget.to_step(180, 64) == 180  # the steps count tokens
    with pytest.raises(ValueError, match="tokens_per_example"):
        Budget("tokens", 600, 60).updates_cap(64, 16, False)


def lm_study(tmp_path: Path, task: str = "lm_factory", **budget) -> Path:
    data = {
        "study": {"name": "lm", "metric": "accuracy", "direction": "maximize", "n_trials": 2, "seed": 0},
        "sampler": {"name": "random"}, "pruner": {"name": "none"},
        "objective": {"task": f"{TASKS}:{task}", "optimizer": "adam", "loader": {"workers": 0}},
        "budget": {"unit": "tokens", "per_trial": 6 * 160, "eval_every": 6 * 64, **budget},
        "search": {"batch_size": [16, 32], "base_lr": 0.01},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_dry_run_plans_a_tokens_budget_in_tokens(tmp_path, capsys):
    assert main([str(lm_study(tmp_path)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "budget per trial: 960 tokens, evaluated every 384 tokens" in out
    assert "tokens = examples x 6 per example" in out
    table = out[out.index("batch_size"):].splitlines()
    header = table[0].split()
    assert header[:6] == ["batch_size", "iterations_per_epoch", "updates", "epochs", "examples", "tokens"]
    by_batch = {int(line.split()[0]): line.split() for line in table[1:3]}
    # 160 examples on N = 64: B 16 takes 10 updates (160 examples); B 32: 2 per epoch, 5 updates
    assert by_batch[16][1:6] == ["4", "10", "2.5", "160", "960"]
    assert by_batch[32][1:6] == ["2", "5", "2.5", "160", "960"]
    assert not (tmp_path / "lm.db").exists()


def test_a_tokens_budget_on_a_task_without_tokens_per_example_is_a_usage_error(tmp_path, capsys):
    study = lm_study(tmp_path, task="lm_factory_without_tokens")
    assert main([str(study), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "objective.task" in err and "tokens_per_example" in err and "budget.unit examples" in err


def test_a_sweep_under_a_tokens_budget_reports_in_tokens(tmp_path):
    config = parse_config(yaml.safe_load(lm_study(tmp_path).read_text()), tmp_path)
    study = run_sweep(config, target_of(config), show_progress=False)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    assert study.user_attrs["step_unit"] == "tokens" and study.user_attrs["budget_unit"] == "tokens"
    for t in trials:
        batch = t.user_attrs["batch_size"]
        assert t.user_attrs["updates"] == 160 // batch
        assert t.user_attrs["examples_seen"] == 160
        assert t.user_attrs["tokens_seen"] == 960 and t.user_attrs["tokens_per_example"] == 6
        assert sorted(t.intermediate_values) == [384, 768, 960]  # the grid, then the budget's end
        assert all(0 <= v <= 1 for v in t.intermediate_values.values())
    assert report_main([str(tmp_path / "study.yaml"), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "summary.json").exists()


def test_a_dict_dataset_sweeps_with_loader_worker_processes(tmp_path):
    study_file = lm_study(tmp_path)
    data = yaml.safe_load(study_file.read_text())
    data["objective"]["loader"] = {"workers": 1, "prefetch": 2, "pin_memory": True}
    data["budget"] = {"unit": "epochs", "per_trial": 2, "eval_every": 1}
    config = parse_config(data, tmp_path)
    study = run_sweep(config, target_of(config), show_progress=False)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:
        assert t.user_attrs["updates"] == 2 * math.ceil(64 / t.user_attrs["batch_size"])
        assert sorted(t.intermediate_values) == [64, 128]


# --- the loader options in the study file ------------------------------------------------------

def loader_config(tmp_path: Path, **loader):
    return parse_config(yaml.safe_load(lm_study(tmp_path).read_text()) | {"objective": {
        "task": "regression", "loader": loader}}, tmp_path)


def test_loader_options_are_validated_and_defaulted(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"objective\.loader\.workers: must be >= 0"):
        loader_config(tmp_path, workers=-1)
    with pytest.raises(ConfigError, match=r"objective\.loader\.prefetch: must be >= 1"):
        loader_config(tmp_path, prefetch=0)
    with pytest.raises(ConfigError, match=r"objective\.loader\.pin_memry: unknown key \(did you mean 'pin_memory'"):
        loader_config(tmp_path, pin_memry=False)
    with pytest.raises(ConfigError, match=r"objective\.loader\.workers: expected an integer"):
        loader_config(tmp_path, workers="many")
    assert loader_config(tmp_path, workers=3, prefetch=4).objective.loader.workers == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # --workers with one core each: load in the training process
    assert loader_config(tmp_path).objective.loader.workers == 0
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert loader_config(tmp_path).objective.loader.workers == default_loader_workers() == cores_per_worker() - 1


class ThreadCount(nn.Linear):
    def __init__(self):
        super().__init__(DIM, 1)
        self.seen: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(torch.get_num_threads())
        return super().forward(x)


def test_training_threads_and_loader_processes_together_fit_the_cores(monkeypatch):
    if cores_per_worker({}) < 2:
        pytest.skip("needs two cores")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # as `--workers` sets it: two cores for this worker
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        task = linear_task(True)
        task.model = ThreadCount()
        trainer_for(task, Budget("updates", 6, 3), 16, loader=LoaderOptions(workers=1)).train()
        assert task.model.seen == {1}  # one loader process beside one training thread
        assert torch.get_num_threads() == 2  # restored after the trial
        tensors = linear_task(False)
        tensors.model = ThreadCount()
        trainer_for(tensors, Budget("updates", 6, 3), 16, loader=LoaderOptions(workers=1)).train()
        assert tensors.model.seen == {2}  # tensor data has no loader: every thread trains
    finally:
        torch.set_num_threads(before)


def test_the_default_loader_workers_fit_the_cores_beside_training():
    cores = cores_per_worker({})
    assert cores_per_worker({"OMP_NUM_THREADS": "1"}) == 1
    assert cores_per_worker({"OMP_NUM_THREADS": str(cores + 8)}) == cores  # never more than the affinity
    assert default_loader_workers({"OMP_NUM_THREADS": "1"}) == 0
    assert default_loader_workers({}) == cores - 1


# --- task factories for the sweeps above ---------------------------------------------------------

def lm_factory(settings: TrialSettings) -> Task:
    return lm_task(settings.seed)


def lm_factory_without_tokens(settings: TrialSettings) -> Task:
    task = lm_task(settings.seed)
    task.tokens_per_example = None
    return task


def test_the_digits_are_scikit_learns_own_read_without_importing_it(monkeypatch):
    """The digits task reads scikit-learn's bundled file itself (importing scikit-learn costs about
    1.4 s of every process that trains digits): the same arrays, bit for bit, as `load_digits`, and
    as the fallback that calls it where the file is not found; a fresh process never imports it."""
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    from objectives.tasks import digits

    reference = load_digits()
    pixels, target = digits.digits_arrays()
    assert digits.bundled_csv() is not None
    assert pixels.dtype == reference.data.dtype and np.array_equal(pixels, reference.data)
    assert target.dtype == reference.target.dtype and np.array_equal(target, reference.target)
    monkeypatch.setattr(digits, "bundled_csv", lambda: None)
    fallback = digits.digits_arrays()
    assert np.array_equal(fallback[0], pixels) and np.array_equal(fallback[1], target)
    code = ("import sys; from objectives.tasks.digits import digits_tensors; x = digits_tensors()[0]; "
            "print(tuple(x.shape), 'sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.split("\n")[0] == "(1438, 64) False", done.stderr
