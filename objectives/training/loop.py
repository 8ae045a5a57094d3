"""The training loop: `Trainer.run_batches` is one readable loop (set the LR, take a step, count,
check, evaluate on the grid); what it is made of lives beside it:

- `step.Step`: one update (micro-batches, autocast, OOM halving) over a `TrainState` value;
- `stream.BatchStream`: the training batches, whose position can be saved and returned to;
- `state.RunSnapshot`: the whole run state at an update, copied and restored;
- `hooks`: the instruments (live record, noise scale, value standard errors, cooldown branches),
  called at named points of the loop; `options.TrainerOptions`: how a study's trials train;
- `units`: what differs between budget units, held by the `Budget`.

Tensor data stays resident on the device, batched by index permutation, no DataLoader; a Dataset
is fed by a DataLoader (`objectives.training.data`), batch by batch.

One trial = `planned_updates` optimizer updates. Evaluation happens on the budget grid (every
`eval_every` budget units), the reporter may prune, early stopping may end it, and a non-finite
loss ends it as diverged. The value is the best evaluation, whose weights are restored.

With `measure_value_se`, each evaluation also estimates its own standard error from the values
of its examples, in the same pass: SE = sd / sqrt(n_val), sd over the validation examples (the
plug-in form: for accuracy p it is sqrt(p (1 - p) / n_val)). It needs the task's per-example
metric (`objectives.task.per_example_metric`); a metric that returns only its mean has none.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from objectives.task import Task
from objectives.training.batches import Batch, batch_len, forward, to_device
from objectives.training.budget import Budget, TrialPlan, eval_points, eval_window  # noqa: F401  (eval_window: re-exported)
from objectives.training.cores import cores_per_worker
from objectives.training.data import make_loader, pins
from objectives.training.hooks import Hook, instruments, overrides
from objectives.training.live import LiveTrial
from objectives.training.options import Patience, TrainerOptions
from objectives.training.schedule import Schedule
from objectives.training.state import optimizer_snapshot, restore_optimizer  # noqa: F401  (re-exported)
from objectives.training.step import OutOfMemory, Step, TrainState, micro_batches
from objectives.training.stream import BatchStream

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
    # horizons only (None without them): one entry per horizon, ascending, the last this run's own
    # (`horizons.HorizonResult`); their branches' time is left out of `train_seconds` as well
    horizons: list | None = None
    horizon_seconds: float | None = None

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


class Clock:
    """A seconds budget's clock: the seconds trained (evaluation left out), the cap that ends the
    trial, the timed evaluation grid, and the schedule's progress when the clock ends the trial."""

    def __init__(self, budget: Budget, n_train: int, started: float, result: TrainResult):
        self.budget, self.n_train, self.started, self.result = budget, n_train, started, result
        self.cap, self.next_eval, self.spent = budget.per_trial, budget.eval_every, 0.0

    def read(self) -> float:
        self.spent = time.perf_counter() - self.started - self.result.eval_seconds
        return self.spent

    def evaluation_due(self) -> int | None:
        """The report step of a grid point the clock has passed, if any (one step for several)."""
        if self.spent < self.next_eval:
            return None
        step = self.budget.to_step(self.next_eval, self.n_train)
        while self.next_eval <= self.spent:
            self.next_eval += self.budget.eval_every
        return step

    def schedule_index(self, horizon: int) -> int:
        """The LR's update index by the clock: the schedule spans the time cap, not an update estimate."""
        return min(int(self.spent / self.cap * horizon), horizon - 1)


class Trainer:
    """Runs one trial's updates; `run_batches` is the hot loop, everything else is bookkeeping."""

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
        hooks: Sequence[Hook] = (),
    ):
        """`hooks`: instruments beyond those the options switch on (`hooks.instruments`)."""
        self.task = task
        self.model: nn.Module = task.model
        self.optimizer = optimizer
        self.state = TrainState(self.model, optimizer)  # what an update changes
        self.schedule = schedule
        self.plan = plan
        self.budget = budget
        self.options = options
        self.sign = 1.0 if options.maximize else -1.0
        self.reporter = reporter
        self.early_stopping = options.early_stopping
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
        self.update = self.step  # (state, batch) -> loss; a hook may measure as it trains
        self.per_example = None  # the per-example metric, when a hook measures the standard error
        self.stream: BatchStream | None = None
        self.result = TrainResult()
        self.best_state: dict[str, Tensor] | None = None
        self.patience = Patience(options.early_stopping, self.sign)
        self.hooks = [*instruments(options, task, schedule, live), *hooks]
        for hook in self.hooks:
            hook.install(self)
        self.on_update = [hook.after_update for hook in self.hooks if overrides(hook, "after_update")]
        self.on_evaluated = [hook.evaluated for hook in self.hooks if overrides(hook, "evaluated")]
        self.on_update_ended = [hook.update_ended for hook in self.hooks if overrides(hook, "update_ended")]
        self.on_finished = [hook.finished for hook in self.hooks if overrides(hook, "finished")]

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
                                     - (self.result.cooldown_seconds or 0.0) - (self.result.horizon_seconds or 0.0))
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
        self.stream = BatchStream(self.task, self.plan, self.generator, self.device, self.seed, self.loader,
                                  self.non_blocking)
        # the plain generator, unless a hook returns to saved positions
        batches = self.stream if any(hook.seeks for hook in self.hooks) else self.stream.batches
        try:
            self.run_batches(started, batches)
        finally:
            self.stream.close()  # the loader's worker processes end with it

    def run_batches(self, started: float, batches: Iterator[Batch]) -> None:
        """The hot loop: LR, step, count, check, hooks, evaluation on the grid. No instrument has a
        branch here: each is a hook (`objectives.training.hooks`)."""
        result, points, on_update = self.result, eval_points(self.plan, self.budget), self.on_update
        clock = Clock(self.budget, self.plan.n_train, started, result) if self.budget.timed else None
        by_clock = clock is not None and self.plan.stop_reason == "budget"  # the clock ends it: the LR follows
        horizon, lr_at, groups = self.plan.planned_updates, self.schedule.lr_at, self.optimizer.param_groups
        augment, tensors = self.task.augment, self.tensors
        within_memory, state, update_fn = self.step.within_memory, self.state, self.update  # fixed once installed
        loss_sum, losses, spent = torch.zeros((), device=self.device), 0, 0.0
        ended = self.on_update_ended
        self.model.train()
        if ended and any(update_ended(0) for update_ended in ended):
            return
        for update in range(2**62 if by_clock else horizon):
            batch = next(batches)
            size = len(batch[0]) if tensors else batch_len(batch)
            if augment is not None:
                batch = augment(batch, self.augment_generator)
            lr = lr_at(clock.schedule_index(horizon) if by_clock else update)
            for group in groups:
                group["lr"] = lr
            loss_sum += within_memory(state, batch, update_fn)
            done = update + 1
            result.updates, result.examples_seen, losses = done, result.examples_seen + size, losses + 1
            if done % self.check_every == 0 and not math.isfinite(loss_sum.item()):
                result.stop_reason = "diverged"
                break
            if clock is not None:
                spent = clock.read()
            for after_update in on_update:
                after_update(done, spent)
            if clock is None:
                step = points.get(done)
            elif spent >= clock.cap:
                break
            else:
                step = clock.evaluation_due()
            if step is not None:
                result.last_train_loss = (loss_sum / max(losses, 1)).item()
                if not math.isfinite(result.last_train_loss):
                    result.stop_reason = "diverged"
                    break
                loss_sum.zero_()
                losses = 0
                if self.evaluate_at(step, done):
                    break
            if ended and any(update_ended(done) for update_ended in ended):
                break
        else:
            result.stop_reason = self.plan.stop_reason

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

    def evaluate_at(self, step: int, done: int) -> bool:
        """The evaluation at a grid point after `done` updates (a hook may take it over, see
        `hooks.CooldownBranches`); True when the trial must stop."""
        return self.evaluate_and_report(step)

    def evaluate_and_report(self, step: int) -> bool:
        """Evaluate at `step`; True when the trial must stop (pruned, diverged, early stop)."""
        value, se = self.evaluate()
        self.result.history.append((step, value))
        for evaluated in self.on_evaluated:
            evaluated(step, value, se)
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
        if self.patience.exhausted(value):
            self.result.stop_reason = "early_stopping"
            return True
        return False

    def finish(self) -> None:
        """Evaluate once more if the run ended off the grid, then restore the best weights. A run
        pruned or stopped early at its last planned update was over anyway: it ends on its plan."""
        if self.result.stop_reason in ("pruned", "early_stopping") and self.result.updates == self.plan.planned_updates:
            self.result.stop_reason = self.plan.stop_reason
        reason = self.result.stop_reason
        last_step = self.result.history[-1][0] if self.result.history else None
        if reason in ("budget", "epochs") and self.result.updates > 0:
            end_step = self.end_step()
            if last_step is None or end_step > last_step:
                self.evaluate_and_report(end_step)
                if self.result.stop_reason in ("pruned", "early_stopping"):
                    self.result.stop_reason = reason  # the run was over anyway
        for finished in self.on_finished:
            finished()
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
    trials' own step (`Step`: precision, micro-batches, OOM halving) on a copy of the model, each
    batch through the task's augment as in training (from a throwaway generator): an augment's
    time is part of every update the budget pays for. Left out, it planned more updates than the
    seconds hold: a run planned by its (searched) epochs was then cut by the cap before its decay.

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
    augment_gen = torch.Generator(device=device).manual_seed(0) if task.augment is not None else None
    timings = []
    for _ in range(updates + 1):
        idx = torch.randint(0, n, (min(batch_size, n),), device=gen.device, generator=gen)
        started = time.perf_counter()
        if tensors:
            batch = (task.train[0][idx], task.train[1][idx])
        else:  # a Dataset: loading the batch is part of the update's time
            batch = to_device(default_collate([task.train[i] for i in idx.tolist()]), device)
        if augment_gen is not None:
            batch = task.augment(batch, augment_gen)
        step.within_memory(state, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - started)
    return sorted(timings[1:])[len(timings[1:]) // 2]  # median, after one warm-up update
