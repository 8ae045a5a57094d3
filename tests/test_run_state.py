"""The run state as a value (objectives/training/stream.py, state.py, hooks.py): a stream returns
to a saved position by its generator states, holding no batch; a snapshot of the whole run,
restored, leaves the run bit-identical; a hook of one's own is called at the loop's named points."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from objectives.task import Task, accuracy
from objectives.training.budget import Budget, plan_trial
from objectives.training.data import LoaderOptions
from objectives.training.hooks import Hook
from objectives.training.loop import Trainer
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule
from objectives.training.state import RunSnapshot
from objectives.training.step import Step, TrainState
from objectives.training.stream import BatchStream, StreamPosition

CPU = torch.device("cpu")


def data(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def stream_of(train, workers: int = 0, drop_last: bool = False) -> BatchStream:
    task = Task(nn.Linear(4, 3), train, train, nn.functional.cross_entropy, accuracy)
    plan = plan_trial(Budget("updates", 100, 10), task.n_train, 8, drop_last=drop_last)
    return BatchStream(task, plan, torch.Generator().manual_seed(5), CPU, 5, LoaderOptions(workers=workers), False)


def take(stream: BatchStream, n: int) -> list[torch.Tensor]:
    return [next(stream)[0].clone() for _ in range(n)]


@pytest.mark.parametrize(("as_dataset", "workers", "drop_last"),
                         [(False, 0, False), (False, 0, True), (True, 0, False), (True, 0, True), (True, 1, False)])
def test_a_stream_returns_to_a_position_across_epochs(as_dataset, workers, drop_last):
    x, y = data()  # 50 examples in batches of 8: 7 per epoch (6 with drop_last)
    train = TensorDataset(x, y) if as_dataset else (x, y)
    plain = take(stream_of(train, workers, drop_last), 30)
    stream = stream_of(train, workers, drop_last)
    assert all(torch.equal(a, b) for a, b in zip(take(stream, 5), plain[:5], strict=True))
    at = 5
    for ahead in (7, 6, 6):  # at 5 (mid-epoch), 12 and 18 (epoch boundaries with drop_last: 6 per epoch)
        position = stream.position()
        assert isinstance(position, StreamPosition) and position.epoch_state.numel() < 10_000  # no batches held
        branch = take(stream, 9)  # a branch running into the next epoch
        assert all(torch.equal(a, b) for a, b in zip(branch, plain[at : at + 9], strict=True))
        stream.seek(position)
        main = take(stream, ahead)
        assert all(torch.equal(a, b) for a, b in zip(main, plain[at : at + ahead], strict=True))
        at += ahead
    stream.close()


def test_a_restored_snapshot_leaves_the_run_bit_identical():
    """Dropout (the global generator), an augment generator, Adam's state and the data position:
    a branch of updates from a snapshot, then restore, and the run goes on as if it never ran."""
    x, y = data()

    def run(branch_at: int | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.Linear(16, 3))
        task = Task(model, (x, y), (x, y), nn.functional.cross_entropy, accuracy)
        state = TrainState(model, torch.optim.Adam(model.parameters(), lr=0.01))
        stream, step = stream_of((x, y)), Step(task, CPU)
        augment = torch.Generator().manual_seed(2)
        for update in range(20):
            if update == branch_at:
                snapshot = RunSnapshot.take(state, stream, augment, CPU)
                for _ in range(9):
                    bx, by = next(stream)
                    step(state, (bx + torch.randn(bx.shape, generator=augment), by))
                snapshot.restore(state, stream, augment, CPU)
            bx, by = next(stream)
            step(state, (bx + torch.randn(bx.shape, generator=augment), by))
        return {k: v.clone() for k, v in model.state_dict().items()}

    plain, branched = run(None), run(4)
    assert all(torch.equal(plain[k], branched[k]) for k in plain)


class Recorder(Hook):
    def __init__(self):
        self.updates, self.evaluations, self.installed = [], [], None

    def install(self, trainer):
        self.installed = trainer

    def after_update(self, done, spent):
        self.updates.append(done)

    def evaluated(self, step, value, se):
        self.evaluations.append(step)


def test_a_hook_of_ones_own_is_called_at_the_named_points():
    x, y = data(64)
    task = Task(nn.Linear(4, 3), (x, y), (x, y), nn.functional.cross_entropy, accuracy)
    budget = Budget("updates", 12, 4)
    plan = plan_trial(budget, 64, 16)
    recorder = Recorder()
    trainer = Trainer(task, torch.optim.SGD(task.model.parameters(), lr=0.1),
                      Schedule.build(0.1, plan.planned_updates, 0.0, "cosine", 0.0), plan, budget,
                      TrainerOptions(maximize=True), seed=0, hooks=[recorder])
    result = trainer.train()
    assert recorder.installed is trainer and recorder.updates == list(range(1, 13))
    assert recorder.evaluations == [4, 8, 12] == [step for step, _ in result.history]
    assert trainer.on_update == [recorder.after_update]  # only the points a hook overrides are called
