"""The training recipe of the hand-written baselines: SGD with momentum 0.9, the LR cosine-decayed to
zero at the trial's last planned update (or the service's wsd schedule), data resident as tensors,
evaluation once per epoch, the examples of every update counted."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import optuna
import torch

from objectives.registry import resolve_task
from objectives.task import TrialSettings
from objectives.training.schedule import Schedule
from sweeps.config.study_file import DEFAULT_DECAY_FRACTION

from .records import Evaluation, TrialRecord
from .tasks import TaskSpec


def cosine_lr(peak: float, update: int, planned: int, warmup: int) -> float:
    if update < warmup:
        return peak * (update + 1) / (warmup + 1)
    last = planned - 1 - warmup
    progress = min((update - warmup) / last, 1.0) if last > 0 else 1.0
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


class EpochRun:
    """One trial of the plain loop, trained one epoch at a time, so that it can be paused after an
    epoch and finished later (one_epoch_topk). The LR schedule is planned for `epochs` epochs from
    the start, whether or not the trial gets to finish."""

    def __init__(self, trainer: PlainTrainer, seed: int, batch_size: int, lr: float, epochs: int,
                 warmup_fraction: float):
        torch.random.default_generator.manual_seed(seed)
        settings = TrialSettings(batch_size=batch_size, lr=lr, seed=seed, device=torch.device("cpu"),
                                 options=dict(trainer.spec.options))
        self.trainer, self.task = trainer, trainer.factory(settings)
        self.batch_size, self.lr, self.epochs = batch_size, lr, epochs
        self.optimizer = torch.optim.SGD(self.task.model.parameters(), lr=lr, momentum=0.9)
        self.gen = torch.Generator().manual_seed(seed)
        self.n = len(self.task.train[0])
        self.planned = -(-self.n // batch_size) * epochs
        self.warmup = min(int(round(warmup_fraction * self.planned)), max(self.planned - 1, 0))
        # "+wsd" baselines: the service's own wsd schedule (its default since issue 17), else cosine
        self.schedule = (Schedule.build(lr, self.planned, warmup_fraction, "wsd", 0.0, DEFAULT_DECAY_FRACTION)
                         if trainer.shape == "wsd" else None)
        self.update = 0
        self.epoch = 0

    def next_epoch(self, record: TrialRecord) -> float:
        """Train one epoch, add its examples to `record` and its evaluation (at `record.examples`,
        so a record may hold a later part of the trial); raises TrialPruned when it diverged."""
        task, (x, y), (xv, yv) = self.task, self.task.train, self.task.val
        model = task.model
        model.train()
        perm = torch.randperm(self.n, generator=self.gen)
        for start in range(0, self.n, self.batch_size):
            idx = perm[start : start + self.batch_size]
            for group in self.optimizer.param_groups:
                group["lr"] = (self.schedule.lr_at(self.update) if self.schedule is not None
                               else cosine_lr(self.lr, self.update, self.planned, self.warmup))
            loss = task.loss(model(x[idx]), y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.update += 1
            record.examples += len(idx)
        self.epoch += 1
        if not math.isfinite(loss.item()):
            raise optuna.TrialPruned()  # diverged: the service records these as pruned too
        model.eval()
        with torch.no_grad():  # in chunks, a mean weighted by chunk size, as the service's Trainer
            value = sum(task.metric(model(xv[i : i + 512]), yv[i : i + 512]).item() * len(xv[i : i + 512])
                        for i in range(0, len(xv), 512)) / len(xv)
        record.evaluations.append(Evaluation(record.examples, value, time.perf_counter() - self.trainer.started))
        if not math.isfinite(value):
            raise optuna.TrialPruned()
        return value


class PlainTrainer:
    """The loop a user writes: epochs of shuffled mini-batches, evaluate after each epoch.

    Counts the training examples it processes; `on_epoch(epoch, examples, value)` may return True
    to stop (pruned).
    """

    def __init__(self, spec: TaskSpec, started: float, shape: str = "cosine"):
        self.spec = spec
        self.shape = shape  # the LR schedule: cosine, or wsd for the "+wsd" baselines
        self.factory = resolve_task(spec.name)
        self.started = started
        self.records: list[TrialRecord] = []

    def start(self, seed: int, batch_size: int, lr: float, epochs: int, warmup_fraction: float) -> EpochRun:
        return EpochRun(self, seed, batch_size, lr, epochs, warmup_fraction)

    def train(self, seed: int, batch_size: int, lr: float, epochs: int, warmup_fraction: float,
              on_epoch: Callable[[int, float], bool] | None = None) -> float:
        run = self.start(seed, batch_size, lr, epochs, warmup_fraction)
        record = TrialRecord(0, [])
        self.records.append(record)
        better = max if self.spec.maximize else min
        best = -math.inf if self.spec.maximize else math.inf
        for epoch in range(1, epochs + 1):
            value = run.next_epoch(record)
            best = better(best, value)
            if on_epoch is not None and on_epoch(epoch, value):
                raise optuna.TrialPruned()
        return best


class one_thread:
    """One intra-op thread, as the service trains on 2 cores (the other is its bookkeeping's)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
