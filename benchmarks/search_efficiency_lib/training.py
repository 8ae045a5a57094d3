"""The training recipe of the hand-written baselines: SGD with momentum 0.9, the LR cosine-decayed to
zero at the trial's last planned update (or the service's wsd schedule), data resident as tensors,
evaluation once per epoch, the examples of every update counted."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import optuna
import torch
from torch.utils.data import default_collate

from objectives.registry import resolve_task
from objectives.task import TrialSettings
from objectives.training.budget import Budget, eval_points, plan_trial
from objectives.training.schedule import Schedule
from sweeps.config.study_file import DEFAULT_DECAY_FRACTION
from sweeps.trial.run_one import trial_seed

from .records import Evaluation, TrialRecord
from .tasks import BATCH_EXPONENTS, WARMUP_RANGE, TaskSpec


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
        self.optimizer = make_optimizer(trainer.spec, self.task.model.parameters(), lr)  # SGD, momentum 0.9
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
        self.factory = resolve_task(spec.task)
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


# --- issue 30: the common recipe, common random numbers and charged evaluation -------------------

START_UP = 10  # the service's TPE start-up trials (sampler.n_startup_trials): the shared start-up draws


def crn_seed(seed: int, k: int) -> int:
    """The init and data-order seed of a method's k-th trial (k from 0) on run seed `seed`: the
    service's own `trial_seed`, so every method's k-th trial trains under the same seed."""
    return trial_seed(seed, k)


def crn_config(spec: TaskSpec, seed: int, k: int) -> dict:
    """The k-th start-up configuration of run seed `seed`: drawn uniformly (log-uniform for the LR,
    uniform over the batch-size exponents and epochs) from the space every method shares, from a
    stream of its own, so that it is the same for every method. Keys are the service's parameter
    names; a method whose space lacks one (the multi-fidelity ones have no epochs) ignores it."""
    rng = random.Random(f"crn:{seed}:{k}")  # str seeds are hashed deterministically (sha512)
    low, high = spec.lr_range
    return {"batch_size_log2": rng.randint(*BATCH_EXPONENTS),
            "base_lr": math.exp(rng.uniform(math.log(low), math.log(high))),
            "warmup_fraction": rng.uniform(*WARMUP_RANGE),
            "epochs": rng.randint(1, spec.epochs)}


def eval_every(spec: TaskSpec) -> float:
    """The service's default evaluation interval for this budget (budget.eval_every: per_trial / 10,
    floored for a count unit): the evaluation grid every method reports on."""
    return float(max(1, math.floor(spec.per_trial / 10)))


def make_optimizer(spec: TaskSpec, params, lr: float) -> torch.optim.Optimizer:
    """The service's `build_optimizer` for the study file's defaults: SGD with momentum 0.9, or
    AdamW with betas (0.9, 0.999), eps 1e-8 and the task's weight decay."""
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=spec.weight_decay)


def batch_of(data, idx: torch.Tensor):
    """The batch at these indices: indexed tensors, or a Dataset's items collated (what its
    DataLoader yields for the same indices)."""
    if isinstance(data, tuple):
        return data[0][idx], data[1][idx]
    return default_collate([data[i] for i in idx.tolist()])


def size_of(data) -> int:
    return len(data[0]) if isinstance(data, tuple) else len(data)


class RecipeRun:
    """One trial on the service's recipe, for the issue-30 baselines.

    The plan is the service's (`plan_trial`: `epochs` epochs, capped by a budget of `length`
    examples, by default the task's per-trial budget), the LR schedule its wsd (warmup
    `warmup_fraction` of the planned updates, the peak held, a 1-sqrt decay over the last
    DEFAULT_DECAY_FRACTION), the optimizer the task's, the init and data order from `seed`
    (`crn_seed`), and evaluations at the service's grid (`eval_points`: every `eval_every(spec)`
    examples) plus one at the end when the run ends off the grid, as the service's Trainer does.
    An evaluation is recorded at its grid step (examples into the trial), as the service records
    its own. `advance` trains to the next evaluation, so a run can be paused and resumed."""

    def __init__(self, spec: TaskSpec, seed: int, batch_size: int, lr: float, warmup_fraction: float,
                 epochs: int | None = None, length: float | None = None, started: float | None = None,
                 params: dict | None = None):
        torch.random.default_generator.manual_seed(seed)
        settings = TrialSettings(batch_size=batch_size, lr=lr, seed=seed, device=torch.device("cpu"),
                                 params=dict(params or {}), options=dict(spec.options))
        self.spec, self.task = spec, resolve_task(spec.task)(settings)
        self.started = time.perf_counter() if started is None else started
        self.n = size_of(self.task.train)
        # a length shorter than one batch (a low fidelity at a large batch size) trains one batch
        budget = Budget("examples", float(max(length or spec.per_trial, min(batch_size, self.n))), eval_every(spec))
        self.budget, self.plan = budget, plan_trial(budget, self.n, batch_size, epochs)
        self.schedule = Schedule.build(lr, self.plan.planned_updates, warmup_fraction, "wsd", 0.0,
                                       DEFAULT_DECAY_FRACTION)
        self.points = eval_points(self.plan, budget)  # after this many updates -> the step (examples)
        if spec.horizons:  # the service's horizons instead of its grid (issue 30: the same points for all)
            reach = {h: budget.updates_to_reach(h, self.plan) for h in spec.horizons if h <= budget.per_trial}
            self.points = {max(1, after): int(h) for h, after in reach.items() if after <= self.plan.planned_updates}
        self.optimizer = make_optimizer(spec, self.task.model.parameters(), lr)
        self.gen = torch.Generator().manual_seed(seed)
        self.batch_size, self.update, self.order, self.position = batch_size, 0, None, 0
        self.record = TrialRecord(0, [], params=dict(params or {}, seed=seed, batch_size=batch_size, lr=lr,
                                                     warmup_fraction=warmup_fraction, epochs=epochs,
                                                     length=float(budget.per_trial)),
                                  started=time.perf_counter() - self.started)
        self.last_step: int | None = None

    @property
    def done(self) -> bool:
        return self.update >= self.plan.planned_updates

    def evaluate(self) -> float:
        task, model = self.task, self.task.model
        model.eval()
        total, count, n_val = 0.0, 0, size_of(task.val)
        with torch.no_grad():  # in chunks, a mean weighted by chunk size, as the service's Trainer
            for start in range(0, n_val, 512):
                idx = torch.arange(start, min(start + 512, n_val))
                x, y = batch_of(task.val, idx)
                total += task.metric(model(x), y).item() * len(idx)
                count += len(idx)
        model.train()
        return total / count

    def train(self, updates: int | None = None):
        """Train to the next evaluation point or the plan's end (or `updates` more updates, not
        stopping at evaluation points); returns the last loss."""
        task, model = self.task, self.task.model
        model.train()
        loss, stop = None, None if updates is None else self.update + updates
        while not self.done:
            if self.order is None or self.position >= self.n:
                self.order, self.position = torch.randperm(self.n, generator=self.gen), 0
            idx = self.order[self.position : self.position + self.batch_size]
            self.position += len(idx)
            for group in self.optimizer.param_groups:
                group["lr"] = self.schedule.lr_at(self.update)
            x, y = batch_of(task.train, idx)
            loss = task.loss(model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.update += 1
            self.record.examples += len(idx)
            if (self.update in self.points and stop is None) or self.update == stop:
                break
        return loss

    def advance(self) -> float | None:
        """Train to the next evaluation point (or the plan's end) and evaluate there; returns the
        value (None when the plan was already over). Raises TrialPruned when the loss diverges."""
        if self.done:
            return None
        loss = self.train()
        if loss is not None and not math.isfinite(loss.item()):
            self.close()
            raise optuna.TrialPruned()  # diverged: the service records these as pruned too
        step = self.points.get(self.update)
        if step is None:  # the end, off the grid: the examples trained (the service's end_step)
            step = min(self.record.examples, int(self.budget.per_trial))
        value = self.evaluate()
        if not math.isfinite(value):  # diverged: not recorded (nor charged), as the service's record has none
            self.close()
            raise optuna.TrialPruned()
        self.record.evaluations.append(Evaluation(step, value, time.perf_counter() - self.started))
        self.last_step = step
        end = min(self.record.examples, int(self.budget.per_trial))
        if self.done and end > step:  # the last grid point fell on the last update: the service's
            value = self.evaluate()   # Trainer.finish still evaluates once more at the end's step
            self.record.evaluations.append(Evaluation(end, value, time.perf_counter() - self.started))
            self.last_step = end
        if self.done:
            self.close()
        return value

    def close(self) -> None:
        self.record.ended = time.perf_counter() - self.started


def measure_eval_charge(spec: TaskSpec, batch_size: int = 64, repeats: int = 5, updates: int = 50) -> dict:
    """What an evaluation costs in training examples, on this machine, one thread: the seconds per
    validation example of the evaluation's forward passes (chunks of 512, no grad) against the
    seconds per training example of an update (forward, backward and optimizer step) at
    `batch_size` (the reference batch size), each the best of `repeats`. The charge of one
    evaluation is that ratio x the validation examples."""
    with one_thread():
        run = RecipeRun(spec, 0, batch_size, min(spec.lr_range), 0.0, length=100 * spec.per_trial)  # no end in sight
        run.train(5)
        run.evaluate()  # warm both paths up once
        per_train, per_val = math.inf, math.inf
        for _ in range(repeats):
            examples, t0 = run.record.examples, time.perf_counter()
            run.train(updates)
            per_train = min(per_train, (time.perf_counter() - t0) / (run.record.examples - examples))
            t0 = time.perf_counter()
            run.evaluate()
            per_val = min(per_val, (time.perf_counter() - t0) / size_of(run.task.val))
    ratio = per_val / per_train
    n_val = size_of(run.task.val)
    return {"ratio": round(ratio, 4), "n_val": n_val, "per_evaluation": round(ratio * n_val, 1),
            "train_us_per_example": round(per_train * 1e6, 2), "val_us_per_example": round(per_val * 1e6, 2),
            "batch_size": batch_size, "torch": torch.__version__}


def time_full_trial(spec: TaskSpec, batch_size: int = 64, seed: int = 0) -> dict:
    """One full trial of the task on the recipe, one thread, timed: batch size 64, the LR at the
    geometric middle of the task's range, warmup 0.05, the whole per-trial budget, every
    evaluation of the grid (the protocol's table; a timing, not a result: the value is not kept)."""
    low, high = spec.lr_range
    with one_thread():
        started = time.perf_counter()
        run = RecipeRun(spec, seed, batch_size, math.sqrt(low * high), 0.05)
        built = time.perf_counter() - started
        evaluating = 0.0
        try:
            while not run.done:
                run.train()
                t0 = time.perf_counter()
                run.evaluate()
                evaluating += time.perf_counter() - t0
        except optuna.TrialPruned:
            pass
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "evaluation_seconds": round(evaluating, 2), "build_seconds": round(built, 2),
            "examples": run.record.examples, "n_train": run.n, "n_val": size_of(run.task.val),
            "parameters": sum(p.numel() for p in run.task.model.parameters()), "batch_size": batch_size,
            "evaluations": spec.evaluations_per_trial}
