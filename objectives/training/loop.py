"""The training loop. Tensor data stays resident on the device, batched by index permutation, no
DataLoader; a Dataset is fed by a DataLoader (`objectives.training.data`), batch by batch.

One trial = `planned_updates` optimizer updates. Evaluation happens on the budget grid (every
`eval_every` budget units), the reporter may prune, early stopping may end it, and a non-finite
loss ends it as diverged. The value is the best evaluation, whose weights are restored.

With cooldown evaluations (opt-in, a wsd schedule only), a grid evaluation before the trial's own
decay is made on a short cooldown branch: weights and optimizer state are copied, a few updates
run on the next training batches with the LR going 1-sqrt from the current LR to zero, the branch
is evaluated and reported, and the copy is restored. The main run then trains on those same
batches, so its trajectory is the one it would have had without branches.

With `measure_value_se`, each evaluation also estimates its own standard error from the values
of its examples, in the same pass: SE = sd / sqrt(n_val), sd over the validation examples (the
plug-in form: for accuracy p it is sqrt(p (1 - p) / n_val)). It needs the task's per-example
metric (`objectives.task.per_example_metric`); a metric that returns only its mean has none.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from objectives.task import Task, per_example_metric
from objectives.training.batches import Batch, batch_len, forward, split, to_device
from objectives.training.budget import Budget, TrialPlan
from objectives.training.cores import cores_per_worker
from objectives.training.data import make_loader, pins
from objectives.training.live import SECONDS, UPDATES, LiveTrial
from objectives.training.noise_scale import GradientParts, NoiseScale
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule, cooled
from objectives.training.step import OutOfMemory, Step, TrainState, micro_batches

# reporter(value, step, value_se) -> True when the trial should stop (pruned); value_se is the
# evaluation's standard error, None unless measured
Reporter = Callable[[float, int, float | None], bool]


@dataclass
class TrainResult:
    best_value: float | None = None
    best_step: int | None = None
    updates: int = 0
    examples_seen: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    stop_reason: str = "budget"  # budget | epochs | early_stopping | pruned | diverged | oom
    history: list[tuple[int, float]] = field(default_factory=list)
    last_train_loss: float | None = None
    micro_batch: int = 0  # largest micro-batch in use at the end (after any OOM recovery)
    accumulation_steps: int = 1
    peak_memory_mb: float | None = None  # CUDA only
    noise_scale_curve: list[tuple[int, float]] | None = None  # (step, B_simple) per evaluation, when measured
    # cooldown evaluations only (None without them): what the branches trained, beside `updates`,
    # `examples_seen` and `train_seconds`, which count the main run alone
    cooldown_updates: int | None = None
    cooldown_examples: int | None = None
    cooldown_seconds: float | None = None
    value_se_curve: list[tuple[int, float]] | None = None  # (step, standard error of the value), when measured

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


class Replay:
    """The training batches with a look-ahead: a cooldown branch trains on the next batches, and
    the main run then gets the same ones, in the same order."""

    def __init__(self, batches: Iterator[Batch]):
        self.batches = batches
        self.ahead: deque[Batch] = deque()

    def __iter__(self) -> Replay:
        return self

    def __next__(self) -> Batch:
        return self.ahead.popleft() if self.ahead else next(self.batches)

    def peek(self, n: int) -> list[Batch]:
        while len(self.ahead) < n:
            self.ahead.append(next(self.batches))
        return list(itertools.islice(self.ahead, n))

    def close(self) -> None:
        self.ahead.clear()
        self.batches.close()


OptimizerSnapshot = tuple[dict[nn.Parameter, dict[str, object]], list[dict[str, object]]]


def optimizer_snapshot(optimizer: torch.optim.Optimizer) -> OptimizerSnapshot:
    """The optimizer's per-parameter state and group settings, copied."""
    state = {p: {k: v.clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in st.items()}
             for p, st in optimizer.state.items()}
    groups = [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    return state, groups


def restore_optimizer(optimizer: torch.optim.Optimizer, snapshot: OptimizerSnapshot) -> None:
    """Put a snapshot back in place: the same state tensors and group dicts (`load_state_dict`
    would make new groups, and the loop sets the LR on the ones it holds)."""
    state, groups = snapshot
    for p in [p for p in optimizer.state if p not in state]:
        del optimizer.state[p]
    for p, saved in state.items():
        live = optimizer.state[p]
        for k in [k for k in live if k not in saved]:
            del live[k]
        for k, v in saved.items():
            if isinstance(v, Tensor) and isinstance(live.get(k), Tensor) and live[k].shape == v.shape:
                live[k].copy_(v)
            else:
                live[k] = v
    for group, saved in zip(optimizer.param_groups, groups, strict=True):
        group.update(saved)


def eval_points(plan: TrialPlan, budget: Budget) -> dict[int, int]:
    """Map 'after this many updates' -> integer report step, for each grid point the plan reaches.

    Every trial reports at the same steps (multiples of eval_every in budget units), whatever its
    batch size, so the pruner compares equal compute. Seconds are timed, not precomputed.
    """
    if budget.timed:
        return {}
    points: dict[int, int] = {}
    k = 1
    while k * budget.eval_every <= budget.per_trial + 1e-9:
        units = k * budget.eval_every
        after = budget.updates_to_reach(units, plan)
        if after > plan.planned_updates:
            break
        points[max(after, 1)] = budget.to_step(units, plan.n_train)
        k += 1
    return points


def eval_window(plan: TrialPlan, budget: Budget) -> int:
    """Updates from the start to the first evaluation: the grid's window (a tenth of the plan
    under a seconds budget, whose grid is timed)."""
    points = eval_points(plan, budget)
    return min(points) if points else max(1, plan.planned_updates // 10)


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


class Trainer:
    """Runs one trial's updates; `train` is the hot loop, everything else is bookkeeping."""

    def __init__(
        self,
        task: Task,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        plan: TrialPlan,
        budget: Budget,
        options: TrainerOptions,
        *,
        seed: int,
        reporter: Reporter | None = None,
        live: LiveTrial | None = None,
    ):
        self.options = options
        measure_noise, cooldown_fraction = options.measure_noise, options.cooldown_fraction
        self.task = task
        self.model: nn.Module = task.model
        self.optimizer = optimizer
        self.schedule = schedule
        self.plan = plan
        self.budget = budget
        self.sign = 1.0 if options.maximize else -1.0
        self.reporter = reporter
        self.early_stopping = options.early_stopping
        self.state = TrainState(self.model, optimizer)  # what an update changes
        self.eval_batch_size = options.eval_batch_size
        self.tensors = isinstance(task.train, tuple | list)  # else a Dataset, through a DataLoader
        device = task.train[0].device if self.tensors else model_device(task.model)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = device
        self.seed = seed
        self.loader = options.loader
        self.non_blocking = pins(self.loader, device)
        self.augment_generator = (
            torch.Generator(device=device).manual_seed(seed + 1) if task.augment is not None else None
        )
        self.val_loader = None  # the Dataset path's evaluation loader, for its eval_batch_size
        self.check_every = 1 if device.type == "cpu" else 32  # host syncs are free on the CPU
        self.step = Step(task, device, precision=options.precision,
                         accumulation=micro_batches(plan.batch_size, options.max_micro_batch))
        self.autocast = self.step.autocast  # evaluation runs under the same precision
        self.live = live  # where a display in another process reads how far the trial is
        self.result = TrainResult()
        # Measuring swaps in its own step; off, the update is `step` exactly as without it.
        self.noise = (NoiseScale(device, eval_window(plan, budget), self.step.accumulation > 1) if measure_noise
                      else None)
        self.update = self.measured_step if measure_noise else self.step
        if measure_noise:
            self.gradient_parts = GradientParts([p for p in self.model.parameters() if p.requires_grad])
            self.result.noise_scale_curve = []
        # Cooldown evaluations: the branch's updates, as a fraction of the updates done (wsd only).
        self.cooldown_fraction = cooldown_fraction if schedule.shape == "wsd" else None
        if self.cooldown_fraction is not None:
            self.result.cooldown_updates, self.result.cooldown_examples, self.result.cooldown_seconds = 0, 0, 0.0
        # the per-example metric when the standard error is measured (None: not measured, or the
        # task's metric returns only its mean); evaluation then sums the values and their squares
        self.per_example = per_example_metric(task) if options.measure_value_se else None
        if self.per_example is not None:
            self.result.value_se_curve = []
        self.best_state: dict[str, Tensor] | None = None
        self.patience_ref: float | None = None
        self.bad_evals = 0

    # --- the hot path -------------------------------------------------------------------
    def measured_step(self, state: TrainState, batch: Batch) -> Tensor:
        """`step`, measuring the noise scale (`noise_scale.py`) from the micro-batches on one
        update in `noise.every`. A batch that is not split is then trained as two half
        micro-batches: the same update, no extra pass."""
        step = self.step
        if not self.noise.due():
            return step(state, batch)
        parts = max(step.accumulation, 2)
        n = batch_len(batch)
        if n < 2:
            return step(state, batch)
        gradients = self.gradient_parts
        loss = torch.zeros((), device=self.device)
        norms = []
        for i, part in enumerate(split(batch, min(parts, n))):
            if i:
                gradients.set_aside()  # this micro-batch's gradient alone, then the sum again
            with step.autocast:
                part_loss = step.loss_of(state.model, part) * (batch_len(part) / n)
            part_loss.backward()
            norms.append(gradients.norms())
            if i:
                gradients.add_back()
            loss += part_loss.detach()
        norms.append(gradients.norms())
        self.noise.add(norms, n)
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def step_within_memory(self, batch: Batch) -> Tensor:
        return self.step.within_memory(self.state, batch, self.update)

    def training_batches(self) -> Iterator[Batch]:
        """Endless batches, epoch after epoch, each epoch in a fresh order drawn from the seed."""
        n, batch_size, per_epoch = self.plan.n_train, self.plan.batch_size, self.plan.iterations_per_epoch
        if self.tensors:
            x, y = self.task.train
            while True:
                perm = torch.randperm(n, device=x.device, generator=self.generator)
                for slot in range(per_epoch):
                    idx = perm[slot * batch_size : (slot + 1) * batch_size]
                    yield x[idx], y[idx]
        loader = make_loader(self.task.train, batch_size, self.loader, self.device, seed=self.seed,
                             shuffle=True, drop_last=self.plan.drop_last)
        device, non_blocking = self.device, self.non_blocking
        while True:
            for batch in loader:
                yield to_device(batch, device, non_blocking)

    def train(self) -> TrainResult:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        threads = torch.get_num_threads()
        try:
            self.fit_threads_to_loader()
            self.run_updates(started)
        except OutOfMemory:
            self.result.stop_reason = "oom"
        finally:
            torch.set_num_threads(threads)
        if cuda:
            torch.cuda.synchronize(self.device)  # so train_seconds and throughput are true
            self.result.peak_memory_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.result.train_seconds = (time.perf_counter() - started - self.result.eval_seconds
                                     - (self.result.cooldown_seconds or 0.0))
        self.result.accumulation_steps = self.step.accumulation
        self.result.micro_batch = -(-self.plan.batch_size // self.step.accumulation)
        if self.result.stop_reason != "oom":
            self.finish()
        return self.result

    def fit_threads_to_loader(self) -> None:
        """Loader processes and training threads together fit this process's cores (cores.py)."""
        workers = 0 if self.tensors else self.loader.resolved_workers()
        cores = cores_per_worker()
        if workers and torch.get_num_threads() + workers > cores:
            torch.set_num_threads(max(1, cores - workers))

    def run_updates(self, started: float) -> None:
        batches = self.training_batches()
        if self.cooldown_fraction is not None:
            batches = Replay(batches)
        try:
            self.run_batches(started, batches)
        finally:
            batches.close()  # the loader's worker processes end with it

    def run_batches(self, started: float, batches: Iterator[Batch]) -> None:
        n = self.plan.n_train
        points = eval_points(self.plan, self.budget)
        timed = self.budget.timed
        next_timed_eval, time_cap = self.budget.eval_every, self.budget.per_trial
        # When the clock ends the trial, the schedule follows the clock: its planned updates are an
        # estimate from a few timed updates, and the run must neither stop short of the cap nor be
        # cut off mid-schedule when throughput differs from that estimate.
        by_clock = timed and self.plan.stop_reason == "budget"
        horizon = self.plan.planned_updates
        spent = 0.0
        groups = self.optimizer.param_groups
        loss_sum = torch.zeros((), device=self.device)
        losses_since_check = 0
        augment, tensors = self.task.augment, self.tensors
        live = self.live.values if self.live is not None else None  # one store per update, no lock
        self.model.train()
        for update in range(2**62 if by_clock else horizon):
            batch = next(batches)
            size = len(batch[0]) if tensors else batch_len(batch)
            if augment is not None:
                batch = augment(batch, self.augment_generator)
            lr = self.schedule.lr_at(min(int(spent / time_cap * horizon), horizon - 1) if by_clock else update)
            for group in groups:
                group["lr"] = lr
            loss_sum += self.step_within_memory(batch)
            self.result.updates = update + 1
            self.result.examples_seen += size
            losses_since_check += 1
            if live is not None:
                live[UPDATES] = update + 1
            if (update + 1) % self.check_every == 0 and not math.isfinite(loss_sum.item()):
                self.result.stop_reason = "diverged"
                break
            step = points.get(update + 1)
            if timed:
                spent = time.perf_counter() - started - self.result.eval_seconds
                if live is not None:
                    live[SECONDS] = spent
                if spent >= time_cap:
                    break
                if spent >= next_timed_eval:
                    step = self.budget.to_step(next_timed_eval, n)
                    while next_timed_eval <= spent:
                        next_timed_eval += self.budget.eval_every
            if step is not None:
                self.result.last_train_loss = (loss_sum / max(losses_since_check, 1)).item()
                if not math.isfinite(self.result.last_train_loss):
                    self.result.stop_reason = "diverged"
                    break
                loss_sum.zero_()
                losses_since_check = 0
                branch = self.cooldown_fraction is not None and update + 1 < self.schedule.decay_start
                if self.evaluate_on_cooldown(step, update + 1, batches) if branch else self.evaluate_and_report(step):
                    break
        else:
            self.result.stop_reason = self.plan.stop_reason

    # --- bookkeeping --------------------------------------------------------------------
    def evaluate(self) -> tuple[float, float | None]:
        """The metric over the validation set, and its standard error when measured."""
        started = time.perf_counter()
        self.model.eval()
        while True:
            try:
                value, se = self.metric_over_val()
                break
            except torch.cuda.OutOfMemoryError:
                if self.eval_batch_size == 1:
                    raise OutOfMemory("evaluation does not fit with one example per chunk") from None
                self.eval_batch_size = max(1, self.eval_batch_size // 2)
        self.model.train()
        self.result.eval_seconds += time.perf_counter() - started
        return value, se

    def metric_over_val(self) -> tuple[float, float | None]:
        if not isinstance(self.task.val, tuple | list):
            return self.metric_over_val_dataset()
        x, y = self.task.val
        sums = torch.zeros(3, device=x.device)  # metric x examples; per-example sum and sum of squares
        with torch.no_grad(), self.autocast:
            for start in range(0, len(x), self.eval_batch_size):
                xb, yb = x[start : start + self.eval_batch_size], y[start : start + self.eval_batch_size]
                self.accumulate(sums, self.model(xb), yb, len(xb))
        return self.mean_and_se(sums, len(x))

    def accumulate(self, sums: Tensor, outputs, targets, n: int) -> None:
        sums[0] += self.task.metric(outputs, targets).float() * n
        if self.per_example is not None:
            values = self.per_example(outputs, targets).float()
            sums[1] += values.sum()
            sums[2] += (values * values).sum()

    def mean_and_se(self, sums: Tensor, n: int) -> tuple[float, float | None]:
        """The metric's mean and, when measured, sd / sqrt(n) from the per-example sums (one
        host sync for both)."""
        value, first, second = (sums / n).tolist()  # the value divided on the device, as ever
        if self.per_example is None:
            return value, None
        variance = max(0.0, second - first * first)
        return value, math.sqrt(variance / n)

    def metric_over_val_dataset(self) -> float:
        """The same mean over a validation Dataset, in order, never augmented."""
        val = self.task.val
        if self.val_loader is None or self.val_loader.batch_size != self.eval_batch_size:
            self.val_loader = None  # an OOM halved the chunk: the old loader's workers end first
            self.val_loader = make_loader(val, self.eval_batch_size, self.loader, self.device,
                                          seed=self.seed, shuffle=False)
        sums = torch.zeros(3, device=self.device)
        with torch.no_grad(), self.autocast:
            for batch in self.val_loader:
                batch = to_device(batch, self.device, self.non_blocking)
                outputs, targets = forward(self.model, batch, self.task.target_key)
                self.accumulate(sums, outputs, targets, batch_len(batch))
        return self.mean_and_se(sums, len(val))

    def evaluate_and_report(self, step: int) -> bool:
        """Evaluate at `step`; True when the trial must stop (pruned, diverged, early stop)."""
        value, se = self.evaluate()
        self.result.history.append((step, value))
        if se is not None:
            self.result.value_se_curve.append((step, se))
        if self.live is not None:
            self.live.evaluated(step, value)
        if self.noise is not None and (noise_scale := self.noise.value()) is not None:
            self.result.noise_scale_curve.append((step, noise_scale))
        if not math.isfinite(value):
            self.result.stop_reason = "diverged"
            return True
        best = self.result.best_value
        if best is None or self.sign * (value - best) > 0:
            self.result.best_value, self.result.best_step = value, step
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.reporter is not None and self.reporter(value, step, se):
            self.result.stop_reason = "pruned"
            return True
        return self.patience_exhausted(value)

    def evaluate_on_cooldown(self, step: int, done: int, batches: Replay) -> bool:
        """`evaluate_and_report` at `step` on a cooldown branch after `done` updates: copy the
        weights, the optimizer state and the random states, train n = cooldown_fraction x done
        updates (at least one) on the next batches with the LR going 1-sqrt from the current one
        towards zero (update i of n at progress i / (n + 1), so even a one-update branch cools and
        none is spent at LR zero), evaluate and report, then restore the copy. True when the trial
        must stop."""
        started, evaluated = time.perf_counter(), self.result.eval_seconds
        saved_model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        saved_optimizer = optimizer_snapshot(self.optimizer)
        augment, generator = self.task.augment, self.augment_generator
        saved_augment = generator.get_state() if generator is not None else None
        groups = self.optimizer.param_groups
        start_lr = groups[0]["lr"]  # the last update's, as the schedule set it
        n = max(1, round(self.cooldown_fraction * done))
        update, self.update = self.update, self.step  # the branch leaves the noise measurement alone
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):  # dropout draws in the branch, not in the main run
                for i, batch in enumerate(batches.peek(n)):
                    self.result.cooldown_examples += batch_len(batch)
                    if augment is not None:
                        batch = augment(batch, generator)
                    lr = cooled(start_lr, (i + 1) / (n + 1))  # below the current LR, zero one update past the end
                    for group in groups:
                        group["lr"] = lr
                    self.step_within_memory(batch)
                    self.result.cooldown_updates += 1
                stop = self.evaluate_and_report(step)
        finally:
            self.update = update
            self.model.load_state_dict(saved_model)
            restore_optimizer(self.optimizer, saved_optimizer)
            if generator is not None:
                generator.set_state(saved_augment)
            self.result.cooldown_seconds += time.perf_counter() - started - (self.result.eval_seconds - evaluated)
        return stop

    def patience_exhausted(self, value: float) -> bool:
        rule = self.early_stopping
        if rule is None:
            return False
        if self.patience_ref is None or self.sign * (value - self.patience_ref) > rule.min_delta:
            self.patience_ref, self.bad_evals = value, 0
            return False
        self.bad_evals += 1
        if self.bad_evals >= rule.patience:
            self.result.stop_reason = "early_stopping"
            return True
        return False

    def finish(self) -> None:
        """Evaluate once more if the run ended off the grid, then restore the best weights."""
        reason = self.result.stop_reason
        last_step = self.result.history[-1][0] if self.result.history else None
        if reason in ("budget", "epochs") and self.result.updates > 0:
            end_step = self.end_step()
            if last_step is None or end_step > last_step:
                self.evaluate_and_report(end_step)
                if self.result.stop_reason in ("pruned", "early_stopping"):
                    self.result.stop_reason = reason  # the run was over anyway
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.val_loader = None  # its worker processes end here, not with the trainer

    def end_step(self) -> int:
        """The report step of the last update: the budget's end, or what `epochs` consumed."""
        if self.result.stop_reason == "budget":
            return self.budget.to_step(self.budget.per_trial, self.plan.n_train)
        units = self.budget.kind.trained(self.result, self.plan, self.budget)
        return self.budget.to_step(units, self.plan.n_train)


OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def measure_seconds_per_update(task: Task, make_optimizer: OptimizerFactory, batch_size: int,
                               updates: int = 5, *, precision: str = "fp32",
                               max_micro_batch: int | None = None) -> float:
    """Time a few updates on throwaway copies, so a seconds budget can plan its horizon: the
    trials' own step (`Step`: precision, micro-batches, OOM halving) on a copy of the model.

    The copy's optimizer is built by the same factory as the trial's: rebuilding it from
    `optimizer.defaults` passes keys some constructors do not take (AdamW's
    `decoupled_weight_decay`)."""
    model = copy.deepcopy(task.model)
    state = TrainState(model, make_optimizer(model.parameters()))
    tensors = isinstance(task.train, tuple | list)
    device = task.train[0].device if tensors else model_device(model)
    step = Step(task, device, precision=precision, accumulation=micro_batches(batch_size, max_micro_batch))
    n = task.n_train
    gen = torch.Generator(device=device if tensors else "cpu").manual_seed(0)
    timings = []
    for _ in range(updates + 1):
        idx = torch.randint(0, n, (min(batch_size, n),), device=gen.device, generator=gen)
        started = time.perf_counter()
        if tensors:
            batch = (task.train[0][idx], task.train[1][idx])
        else:  # a Dataset: loading the batch is part of the update's time
            batch = to_device(default_collate([task.train[i] for i in idx.tolist()]), device)
        step.within_memory(state, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - started)
    return sorted(timings[1:])[len(timings[1:]) // 2]  # median, after one warm-up update
