"""One trial: couple the LR, plan the budget, train, and collect what it derived."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import optuna
import torch
from optuna.trial import TrialState

from objectives.registry import TaskFactory
from objectives.task import Task, TrialSettings
from objectives.training.budget import Budget, TrialPlan, plan_trial
from objectives.training.coupling import Coupled, couple
from objectives.training.data import LoaderOptions
from objectives.training.live import LiveTrial
from objectives.training.loop import Reporter, Trainer, TrainResult, measure_seconds_per_update
from objectives.training.optimizers import OPTIMIZERS
from objectives.training.options import EarlyStopping, TrainerOptions
from objectives.training.schedule import Schedule
from sweeps.config.gpus import machine_gpu
from sweeps.config.study_file import ObjectiveSection, SweepConfig
from sweeps.errors import interruption_behind
from sweeps.search.space import Suggestion
from sweeps.trial import record
from sweeps.trial.checkpoints import Checkpoint
from sweeps.trial.record import TrialRecord


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Deterministic and distinct per trial; same study seed and number, same training run."""
    return (study_seed * 1_000_003 + trial_number * 7_919 + 1) % (2**31 - 1)


def seed_number(trial) -> int:
    """The trial number whose seed a trial trains with: a retry (after its worker died or was
    stopped) takes the original's, so it computes what the original would have."""
    retry_of = getattr(trial, "retry_of", None)
    return trial.number if retry_of is None else retry_of


def training_seed_of(config: SweepConfig, trial) -> int:
    """The seed the trial was queued with (a confirmation run), else `study.training_seed` when the
    study file fixes it (an exported best trial), else `trial_seed`."""
    queued = getattr(trial, "fixed_seed", None)
    if queued is not None:
        return queued
    fixed = config.study.training_seed
    return fixed if fixed is not None else trial_seed(config.study.seed, seed_number(trial))


def resolve_device(name: str, memory_fraction: float | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"objective.device is {name!r} but no CUDA device is available")
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls and convolutions on Ampere+
        torch.backends.cudnn.allow_tf32 = True
        if memory_fraction:
            index = device.index if device.index is not None else torch.cuda.current_device()
            torch.cuda.set_per_process_memory_fraction(memory_fraction, index)
    return device


def build_optimizer(section: ObjectiveSection, params, coupled: Coupled) -> torch.optim.Optimizer:
    """The section's torch.optim optimizer (`objectives.training.optimizers`: stepped without
    importing torch._dynamo)."""
    optimizer = OPTIMIZERS[section.optimizer]
    if section.optimizer == "sgd":
        return optimizer(params, lr=coupled.lr, momentum=section.momentum, weight_decay=section.weight_decay)
    return optimizer(params, lr=coupled.lr, betas=coupled.betas or section.betas,
                     eps=coupled.eps or section.eps, weight_decay=section.weight_decay)


def compile_model(task: Task, section: ObjectiveSection) -> None:
    """`objective.compile`: the task's model through torch.compile (trials and the probe alike)."""
    if section.compile:
        task.model = torch.compile(task.model)


def build_task(factory: TaskFactory, settings: TrialSettings) -> Task:
    """The task as the factory builds it for `settings`, checked (a trial's, and the study's
    reference task that `sweeps.loop.runner.build_reference_task` builds once to learn N)."""
    task = factory(settings)
    if not isinstance(task, Task):
        raise TypeError(f"the task factory returned {type(task).__name__}, not objectives.Task")
    task.validate()
    return task


class OutOfMemoryTrial(RuntimeError):
    """The trial's batch does not fit the device even one example at a time."""


@dataclass
class PreparedTrial:
    """Everything derived before training starts."""

    suggestion: Suggestion
    seed: int
    task: Task
    coupled: Coupled
    optimizer: torch.optim.Optimizer | None  # None for a fused group's member: it trains with the group's
    plan: TrialPlan
    schedule: Schedule
    warmup_updates: int | None = None  # when absolute (`warmup_updates`): the schedule's, unclamped


class SweepObjective:
    """The callable handed to `study.optimize`; the service owns the loop, the task only data."""

    def __init__(self, config: SweepConfig, factory: TaskFactory, budget: Budget,
                 probed_micro_batch: dict[str, int] | int | None = None):
        """`probed_micro_batch` is the study's attribute as stored: only this device model's entry
        applies (see `probed_for`)."""
        self.config = config
        self.factory = factory
        self.budget = budget
        self.device = resolve_device(config.objective.device, config.objective.gpu_memory_fraction)
        limits = [m for m in (config.objective.max_micro_batch, probed_for(probed_micro_batch, self.device)) if m]
        self.max_micro_batch = min(limits) if limits else None
        self.options = trainer_options(config, self.max_micro_batch)
        self.keeper = None  # sweeps.trial.checkpoints.CheckpointKeeper, set by the runner: the best trials' weights
        self.identity: dict[str, object] = {}  # which worker ran the trial (worker number, sampler seed)
        self.live: LiveTrial | None = None  # set by the runner when a progress display reads it

    def prepare(self, trial: optuna.Trial, point: Suggestion, *, optimizer: bool = True) -> PreparedTrial:
        """The trial's task, plan and schedule, and its torch.optim optimizer unless `optimizer` is
        False (a fused group's member, which trains with the group's stacked optimizer)."""
        cfg = self.config
        seed = training_seed_of(cfg, trial)
        coupled = couple(point.coupling, point.base_lr, point.batch_size,
                         cfg.search.reference_batch_size, cfg.objective.betas, cfg.objective.eps)
        task = self.make_task(point, coupled, seed, trial.params)
        built = build_optimizer(cfg.objective, task.model.parameters(), coupled) if optimizer else None
        n_train = task.n_train
        timed_updates = None
        if self.budget.timed:
            per_update = measure_seconds_per_update(
                task, lambda params: build_optimizer(cfg.objective, params, coupled), point.batch_size,
                precision=self.options.precision, max_micro_batch=self.options.max_micro_batch)
            timed_updates = max(1, math.floor(self.budget.per_trial / per_update))
        plan = plan_trial(self.budget, n_train, point.batch_size, point.epochs,
                          cfg.objective.drop_last, timed_updates)
        warmup = warmup_updates(cfg, point, plan)
        schedule = Schedule.build(coupled.lr, plan.planned_updates, point.warmup_fraction,
                                  cfg.schedule.name, cfg.schedule.final_lr_fraction, cfg.schedule.decay_fraction,
                                  warmup_updates=warmup)
        return PreparedTrial(point, seed, task, coupled, built, plan, schedule, warmup)

    def make_task(self, point: Suggestion, coupled: Coupled, seed: int, params: dict) -> Task:
        # Model initialisation draws from the CPU generator; torch.manual_seed would also seed
        # (lazily, recording a stack trace) every accelerator backend, milliseconds per trial.
        torch.random.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        settings = TrialSettings(
            batch_size=point.batch_size, lr=coupled.lr, seed=seed, device=self.device,
            params=dict(params), options=dict(self.config.objective.options),
            base_dir=self.config.base_dir, maximize=self.config.study.direction == "maximize",
        )
        task = build_task(self.factory, settings)
        task.to(self.device)
        compile_model(task, self.config.objective)
        return task

    def run(self, trial: optuna.Trial, point: Suggestion, pruner: Reporter) -> Outcome:
        """Train one trial; nothing here writes to the store (the sweep loop records the outcome)."""
        outcome = Outcome(TrialState.FAIL, attrs=dict(self.identity))

        def report(value: float, step: int, value_se: float | None) -> bool:
            outcome.curve[step] = value
            return pruner(value, step, value_se)

        live = self.live
        try:
            if live is not None:
                live.begin(trial.number, point.batch_size, point.base_lr)
            prepared = self.prepare(trial, point)
            outcome.attrs.update(plan_attrs(prepared, self.device))
            if live is not None:
                live.plan(prepared.coupled.lr, prepared.plan.planned_updates, self.budget.planned(prepared.plan),
                          self.budget.per_trial if timed_by_clock(prepared.plan, self.budget) else None)
            result = self.train(prepared, report)
            outcome.attrs.update(record.result_attrs(result, prepared.plan))
            if self.keeper is not None and result.stop_reason not in ("pruned", "diverged", "oom"):
                outcome.checkpoint = self.keeper.offer(trial, prepared.task.model, result.best_value, outcome.attrs)
            if result.stop_reason == "oom":
                raise OutOfMemoryTrial(f"batch size {prepared.plan.batch_size} does not fit even as "
                                       "micro-batches of one example")
        except Exception as err:
            if (interruption := interruption_behind(err)) is not None:
                raise interruption from None  # the sweep stops, as on the signal itself
            outcome.attrs.update(record.error_attrs(f"{type(err).__name__}: {err}"[:2000]))
            outcome.error = err
            return outcome
        finally:
            if live is not None:
                live.end()
            self.release_memory()
        if result.stop_reason in ("pruned", "diverged") or result.best_value is None:
            outcome.state = TrialState.PRUNED
        else:
            outcome.state, outcome.value = TrialState.COMPLETE, result.best_value
        return outcome

    def release_memory(self) -> None:
        """Hand the trial's cached device memory back before the next trial (the tensors are gone
        with their last reference; a full gc.collect would cost more than a short trial)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def train(self, prepared: PreparedTrial, report: Reporter) -> TrainResult:
        trainer = Trainer(prepared.task, prepared.optimizer, prepared.schedule, prepared.plan, self.budget,
                          self.options, seed=prepared.seed, reporter=report, live=self.live)
        return trainer.train()


def warmup_updates(config: SweepConfig, point: Suggestion, plan: TrialPlan) -> int | None:
    """The warmup in updates when it is absolute: `schedule.warmup_updates`, or with horizons the
    trial's warmup fraction of its longest horizon, held for the shorter ones; else None (a
    fraction of the trial's own updates, as `Schedule.build` takes it)."""
    if config.schedule.warmup_updates is not None:
        return config.schedule.warmup_updates
    if config.budget.horizons is not None:
        return int(round(point.warmup_fraction * plan.planned_updates))
    return None


def trainer_options(config: SweepConfig, max_micro_batch: int | None) -> TrainerOptions:
    """How every trial of the study trains, from its study file (`max_micro_batch`: the file's
    limit or the probed one, whichever is smaller)."""
    objective, stopping = config.objective, config.early_stopping
    return TrainerOptions(
        maximize=config.study.direction == "maximize",
        early_stopping=EarlyStopping(stopping.patience, stopping.min_delta) if stopping else None,
        max_micro_batch=max_micro_batch,
        eval_batch_size=objective.eval_batch_size,
        precision=objective.precision,
        loader=LoaderOptions(objective.loader.workers, objective.loader.prefetch, objective.loader.pin_memory),
        measure_noise=config.measure.noise_scale,
        cooldown_fraction=config.schedule.cooldown_fraction if config.schedule.cooldown_evaluations else None,
        measure_value_se=config.measure.value_se or config.pruner.noise_margin is not None,
        horizons=config.budget.horizon_units(),
    )


def timed_by_clock(plan: TrialPlan, budget: Budget) -> bool:
    """The clock ends the trial (as `Trainer.run_batches` decides), so its progress is time, not updates."""
    return budget.timed and plan.stop_reason == "budget"


@dataclass
class Outcome:
    """How a trial ended and what it records: user attributes and its whole learning curve."""

    state: TrialState
    value: float | None = None
    attrs: dict[str, object] = field(default_factory=dict)
    curve: dict[int, float] = field(default_factory=dict)
    error: BaseException | None = None
    checkpoint: Checkpoint | None = None  # the best weights, when the trial enters the study's best few

    @property
    def record(self) -> TrialRecord:
        """`attrs` read as the record they will be stored as."""
        return TrialRecord.from_attrs(self.attrs)


def plan_attrs(prepared: PreparedTrial, device: torch.device) -> dict[str, object]:
    """What the trial derived before training; a crashed trial records these too."""
    return {
        **record.plan_attrs(prepared.suggestion.batch_size, prepared.coupled.lr, prepared.suggestion.coupling,
                            prepared.plan, prepared.seed, str(device), prepared.warmup_updates),
        **gpu_attrs(device),
    }


def device_model(device: torch.device) -> str:
    """What a probed limit is kept under: the GPU's model name (an H100 and an A10 on one study
    hold different limits), or the device type ("cpu", "mps")."""
    if device.type != "cuda":
        return device.type
    return torch.cuda.get_device_name(device.index if device.index is not None else torch.cuda.current_device())


def probed_for(stored: object, device: torch.device) -> int | None:
    """The probed micro-batch measured on this device's model, if any. A plain int (stored before
    the probe kept one per model) is ignored: it may come from another GPU, and too small a limit
    costs speed while too large a one costs only OOM retries; probe again to restore it."""
    if not isinstance(stored, dict):
        return None
    value = stored.get(device_model(device))
    return value if isinstance(value, int) and value >= 1 else None


def gpu_attrs(device: torch.device) -> dict[str, object]:
    """Which GPU ran the trial: `gpu`, its index as nvidia-smi numbers it (None when it cannot be
    told), and `gpu_name`. Nothing on the CPU, so CPU trials carry no GPU attributes at all."""
    if device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return record.gpu_attrs(machine_gpu(index, os.environ), torch.cuda.get_device_name(index))
