"""The study file: one dataclass per YAML section, validated before anything runs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from objectives.training.cores import default_loader_workers
from objectives.training.units import unit_named, unit_names
from sweeps.config.overrides import apply_overrides, blamed_on
from sweeps.config.schema import Choice, build, join
from sweeps.errors import ConfigError

SamplerName = Literal["tpe", "random", "grid", "qmc", "gp", "cmaes"]
PrunerName = Literal["none", "median", "hyperband", "successive_halving"]
CouplingName = Literal["none", "linear", "sqrt", "adam_sqrt"]
ScheduleName = Literal["constant", "cosine", "linear", "wsd"]
OptimizerName = Literal["sgd", "adam", "adamw"]
# study.total_budget may count training time, in these units (seconds each), beside the budget's own
TIME_UNITS = {"seconds": 1.0, "gpu_hours": 3600.0}


class BudgetUnit(Choice):
    """A registered budget unit's name (objectives/training/units/)."""

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return unit_names()


class TotalBudgetUnit(Choice):
    """What study.total_budget counts: the budget's own unit, or training time."""

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return (*unit_names(), *(t for t in TIME_UNITS if t not in unit_names()))


def check(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(path, message)


@dataclass
class TotalBudgetSection:
    """What the whole sweep may spend, summed over every worker on every machine and every run."""

    amount: float
    unit: TotalBudgetUnit

    def validate(self, path: str) -> None:
        check(self.amount > 0, join(path, "amount"), f"must be > 0 (got {self.amount:g})")


@dataclass
class StudySection:
    name: str
    metric: str
    n_trials: int
    storage: str | None = None
    direction: Literal["maximize", "minimize"] = "maximize"
    seed: int = 0
    max_failures: int = 5  # consecutive failed trials after which the sweep stops
    heartbeat_interval: int = 10  # seconds; a dead worker's trial is retried (0: off)
    grace_period: int | None = None  # seconds without a heartbeat before that; default 2 x interval
    max_retry: int = 3  # times one configuration is retried after its worker died or was stopped
    training_seed: int | None = None  # every trial trains with this seed (default: from seed and trial number)
    total_budget: TotalBudgetSection | None = None  # the sweep stops starting trials once it is spent

    def validate(self, path: str) -> None:
        check(bool(self.name.strip()), join(path, "name"), "must not be empty")
        check(self.n_trials >= 1, join(path, "n_trials"), f"must be >= 1 (got {self.n_trials})")
        check(self.max_failures >= 1, join(path, "max_failures"), "must be >= 1")
        check(self.heartbeat_interval >= 0, join(path, "heartbeat_interval"), "must be >= 0")
        if self.grace_period is not None:
            check(self.grace_period > self.heartbeat_interval, join(path, "grace_period"),
                  "must be longer than heartbeat_interval")
        check(self.max_retry >= 0, join(path, "max_retry"), "must be >= 0")
        if self.training_seed is not None:
            check(0 <= self.training_seed < 2**31 - 1, join(path, "training_seed"),
                  f"must be in [0, 2**31 - 1) (got {self.training_seed})")


@dataclass
class SamplerSection:
    name: SamplerName = "tpe"
    n_startup_trials: int = 10  # tpe and gp: random trials before the model is used
    grid_points: int = 4  # grid: points per continuous parameter

    def validate(self, path: str) -> None:
        check(self.n_startup_trials >= 0, join(path, "n_startup_trials"), "must be >= 0")
        check(self.grid_points >= 1, join(path, "grid_points"), "must be >= 1")


@dataclass
class PrunerSection:
    name: PrunerName = "hyperband"
    reduction_factor: int = 3
    min_resource: float | None = None  # budget units; defaults to budget.eval_every
    n_startup_trials: int = 5  # median
    warmup: float = 0.0  # median: budget units before any pruning
    # opt-in: keep a trial the pruner would cut while it trails the cut by no more than this many
    # combined standard errors of the rung values (sweeps/search/noise_guard.py); None: off
    noise_margin: float | None = None

    def validate(self, path: str) -> None:
        check(self.reduction_factor >= 2, join(path, "reduction_factor"), "must be >= 2")
        if self.min_resource is not None:
            check(self.min_resource > 0, join(path, "min_resource"), "must be > 0")
        check(self.n_startup_trials >= 0, join(path, "n_startup_trials"), "must be >= 0")
        check(self.warmup >= 0, join(path, "warmup"), "must be >= 0")
        if self.noise_margin is not None:
            check(math.isfinite(self.noise_margin) and self.noise_margin > 0, join(path, "noise_margin"),
                  f"must be a finite number > 0, got {self.noise_margin!r}")
            check(self.name != "none", join(path, "noise_margin"), "needs a pruner (pruner.name is none)")


@dataclass
class LoaderSection:
    """How a Dataset task's batches are loaded (tensor tasks ignore it). The default `workers`
    leaves one core to training: max(0, cores_per_worker - 1), where cores_per_worker is the
    fewest of the CPU affinity and OMP_NUM_THREADS (`--workers N` sets it to cores // N), so loader
    processes and training threads together fit the cores (objectives/training/cores.py)."""

    workers: int | None = None  # DataLoader worker processes (0: load in the training process)
    prefetch: int = 2  # batches each worker loads ahead
    pin_memory: bool = True  # CUDA only: pinned host batches, copied to the device without blocking

    def fill_defaults(self) -> None:
        if self.workers is None:
            self.workers = default_loader_workers()

    def validate(self, path: str) -> None:
        check(self.workers >= 0, join(path, "workers"), f"must be >= 0 (got {self.workers})")
        check(self.prefetch >= 1, join(path, "prefetch"), f"must be >= 1 (got {self.prefetch})")


@dataclass
class ObjectiveSection:
    task: str
    optimizer: OptimizerName = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    device: str = "auto"
    drop_last: bool = False
    max_micro_batch: int | None = None
    eval_batch_size: int = 4096
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast for forward and loss
    compile: bool = False  # torch.compile the model
    # several trials trained as one fused model (objectives/training/fused/, docs/guide/fused_training.md): auto
    # (K measured on the model and batch size; one at a time for what cannot fuse), K members per group, or off
    fuse: int | Literal["auto", "off"] = "auto"
    gpu_memory_fraction: float | None = None  # cap this process's share of the GPU (workers sharing one)
    loader: LoaderSection = field(default_factory=LoaderSection)  # a Dataset task's DataLoader
    options: dict[str, Any] = field(default_factory=dict)  # passed to the task factory

    def validate(self, path: str) -> None:
        check(bool(self.task.strip()), join(path, "task"), "must not be empty")
        check(0 <= self.momentum < 1, join(path, "momentum"), "must be in [0, 1)")
        check(self.weight_decay >= 0, join(path, "weight_decay"), "must be >= 0")
        for i, beta in enumerate(self.betas):
            check(0 <= beta < 1, join(join(path, "betas"), i), "must be in [0, 1)")
        check(self.eps > 0, join(path, "eps"), "must be > 0")
        device_ok = self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")
        check(device_ok, join(path, "device"), f"must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if self.max_micro_batch is not None:
            check(self.max_micro_batch >= 1, join(path, "max_micro_batch"), "must be >= 1")
        check(self.eval_batch_size >= 1, join(path, "eval_batch_size"), "must be >= 1")
        if self.gpu_memory_fraction is not None:
            check(0 < self.gpu_memory_fraction <= 1, join(path, "gpu_memory_fraction"), "must be in (0, 1]")
        if isinstance(self.fuse, int):
            check(1 <= self.fuse <= 64, join(path, "fuse"),
                  f"must be auto, off or a group size from 1 to 64 (got {self.fuse})")


@dataclass
class BudgetSection:
    unit: BudgetUnit
    per_trial: float
    eval_every: float | None = None  # budget units between evaluations; default per_trial / 10
    # lengths every trial answers for, branched off its run (objectives/training/horizons.py): in
    # the budget's unit, or "0.25x" for a fraction of per_trial, which is always the longest
    horizons: list[float | str] | None = None

    def horizon_units(self) -> tuple[float, ...] | None:
        """The horizons in the budget's unit, ascending, ending with `per_trial`; None when off."""
        if self.horizons is None:
            return None
        lengths = {horizon_length(h, self.per_trial) for h in self.horizons} | {float(self.per_trial)}
        return tuple(sorted(lengths))

    def fill_defaults(self) -> None:
        if self.eval_every is None and self.per_trial > 0:
            self.eval_every = self.per_trial / 10
            if unit_named(self.unit).whole:
                self.eval_every = max(1.0, math.floor(self.eval_every))

    def validate(self, path: str) -> None:
        check(self.per_trial > 0, join(path, "per_trial"), f"must be > 0 (got {self.per_trial:g})")
        if unit_named(self.unit).whole:
            check(
                float(self.per_trial).is_integer(),
                join(path, "per_trial"),
                f"must be a whole number of {self.unit}",
            )
        check(self.eval_every > 0, join(path, "eval_every"), "must be > 0")
        if self.horizons is not None:
            self.validate_horizons(join(path, "horizons"))
        check(
            self.eval_every <= self.per_trial,
            join(path, "eval_every"),
            f"must be <= per_trial ({self.eval_every:g} > {self.per_trial:g})",
        )


    def validate_horizons(self, path: str) -> None:
        check(bool(self.horizons), path, "must hold at least one length (or leave it out)")
        lengths = []
        for i, given in enumerate(self.horizons):
            try:
                length = horizon_length(given, self.per_trial)
            except ValueError:
                raise ConfigError(join(path, i), f"must be a number of {self.unit} or a fraction of per_trial "
                                                 f"like '0.25x'; got {given!r}") from None
            check(0 < length <= self.per_trial, join(path, i),
                  f"must be > 0 and <= per_trial ({self.per_trial:g} {self.unit}); got {length:g}")
            if unit_named(self.unit).whole:
                check(length.is_integer(), join(path, i), f"must be a whole number of {self.unit}; "
                                                          f"{given!r} is {length:g}")
            check(length not in lengths, join(path, i), f"repeats the length {length:g}")
            lengths.append(length)


def horizon_length(given: float | str, per_trial: float) -> float:
    """A horizon as written: a number in the budget's unit, or 'Fx', F times per_trial."""
    if isinstance(given, str):
        text = given.strip().lower()
        if text.endswith("x"):
            return float(text[:-1]) * per_trial
        return float(text)
    return float(given)


@dataclass
class IntRange:
    low: int
    high: int
    log: bool = False
    power_of_two: bool = False

    def validate(self, path: str) -> None:
        check(self.low <= self.high, path, f"empty or inverted range: low {self.low} > high {self.high}")
        if self.log:
            check(self.low >= 1, join(path, "low"), "must be >= 1 on a log scale")
        if self.power_of_two:
            check(self.low >= 1, join(path, "low"), "must be >= 1")
            check(
                power_of_two_values(self.low, self.high) != [],
                path,
                f"holds no power of two between {self.low} and {self.high}",
            )

    def values(self) -> list[int]:
        if self.power_of_two:
            return power_of_two_values(self.low, self.high)
        return list(range(self.low, self.high + 1))


@dataclass
class FloatRange:
    low: float
    high: float
    log: bool = False

    def validate(self, path: str) -> None:
        check(self.low <= self.high, path, f"empty or inverted range: low {self.low:g} > high {self.high:g}")
        if self.log:
            check(self.low > 0, join(path, "low"), "must be > 0 on a log scale")


def power_of_two_values(low: int, high: int) -> list[int]:
    exponent = max(0, math.ceil(math.log2(max(low, 1))))
    values = []
    while 2**exponent <= high:
        values.append(2**exponent)
        exponent += 1
    return values


@dataclass
class LrRangeTestSection:
    """A measured prior on the LR (sweeps/search/prior.py): an LR range test at three batch sizes,
    once per study, centres the base-LR search and sets the coupling rule; with `cap_batch`, the
    gradient noise scale it measures caps the batch sizes searched."""

    budget_fraction: float = 0.05  # its cost, at most, as a share of n_trials full trials
    below: float = 20.0  # the search is centred this factor below the LR of least loss
    span: float = 100.0  # high / low of the base-LR range searched around that centre
    batch_sizes: list[int] | None = None  # tested; default the smallest, middle and largest searched
    # also measure the gradient noise scale in the tests, and search batch sizes only up to it
    cap_batch: bool = False

    def validate(self, path: str) -> None:
        if self.batch_sizes is not None:
            check(len(set(self.batch_sizes)) >= 2, join(path, "batch_sizes"),
                  "must hold at least two batch sizes, to fit the coupling (or leave it out)")
        check(0 < self.budget_fraction <= 0.2, join(path, "budget_fraction"),
              f"must lie in (0, 0.2] (got {self.budget_fraction:g}): the test is a small share of the sweep")
        check(self.below >= 1, join(path, "below"), f"must be >= 1 (got {self.below:g})")
        check(self.span > 1, join(path, "span"), f"must be > 1 (got {self.span:g})")


@dataclass
class SearchSection:
    batch_size: IntRange | list[int] | int
    base_lr: FloatRange | list[float] | float
    coupling: list[CouplingName] | CouplingName = "none"
    reference_batch_size: int | None = None  # default: the smallest candidate batch size
    epochs: IntRange | list[int] | int | None = None
    warmup_fraction: FloatRange | float = 0.0
    lr_range_test: LrRangeTestSection | None = None  # off by default
    # Not read from the file: the study's measured prior (sweeps/search/prior.py), set when the
    # study is opened; what the sampler then searches is `prior.searched(self)`.
    measured: ClassVar[Any] = None

    def fill_defaults(self) -> None:
        if self.reference_batch_size is None and self.batch_sizes():
            self.reference_batch_size = min(self.batch_sizes())

    def validate(self, path: str) -> None:
        sizes = self.batch_sizes()
        check(bool(sizes), join(path, "batch_size"), "must hold at least one batch size")
        for b in sizes:
            check(b >= 1, join(path, "batch_size"), f"batch sizes must be >= 1 (got {b})")
        if isinstance(self.base_lr, FloatRange):
            check(self.base_lr.low > 0, join(join(path, "base_lr"), "low"), "must be > 0")
        else:
            lrs = self.base_lr if isinstance(self.base_lr, list) else [self.base_lr]
            check(bool(lrs), join(path, "base_lr"), "must hold at least one value")
            check(all(lr > 0 for lr in lrs), join(path, "base_lr"), "learning rates must be > 0")
        if isinstance(self.coupling, list):
            check(bool(self.coupling), join(path, "coupling"), "must hold at least one rule")
        check(self.reference_batch_size >= 1, join(path, "reference_batch_size"), "must be >= 1")
        if self.epochs is not None:
            check(bool(self.epoch_choices()), join(path, "epochs"), "must hold at least one value (or leave it out)")
            for e in self.epoch_choices():
                check(e >= 1, join(path, "epochs"), f"epochs must be >= 1 (got {e})")
        warm = self.warmup_fraction
        low, high = (warm.low, warm.high) if isinstance(warm, FloatRange) else (warm, warm)
        check(0 <= low and high < 1, join(path, "warmup_fraction"), "must lie in [0, 1)")

    def batch_sizes(self) -> list[int]:
        if isinstance(self.batch_size, IntRange):
            return self.batch_size.values()
        return list(self.batch_size) if isinstance(self.batch_size, list) else [self.batch_size]

    def epoch_choices(self) -> list[int]:
        if self.epochs is None:
            return []
        if isinstance(self.epochs, IntRange):
            return [self.epochs.low, self.epochs.high]
        return list(self.epochs) if isinstance(self.epochs, list) else [self.epochs]

    def couplings(self) -> list[str]:
        return list(self.coupling) if isinstance(self.coupling, list) else [self.coupling]

    def reference_lr(self) -> float:
        """The base LR the dry-run plan shows: the geometric middle of the searched range."""
        lr = self.base_lr
        if isinstance(lr, FloatRange):
            return math.sqrt(lr.low * lr.high) if lr.log else (lr.low + lr.high) / 2
        return lr[0] if isinstance(lr, list) else lr


DEFAULT_DECAY_FRACTION = 0.2  # wsd: the last fifth of the plan decays (Hägele et al. 2024 use 0.1-0.2)
DEFAULT_COOLDOWN_FRACTION = 0.1  # a cooldown branch: a tenth of the updates done so far


@dataclass
class ScheduleSection:
    """The LR over a trial's planned updates. The default is warmup-stable-decay (issue 17: it
    beat cosine on the benchmark's development tasks, docs/search_efficiency.md); studies started
    under the earlier cosine default keep it with `schedule: {name: cosine}`. Cooldown evaluations
    stay opt-in: left at False they change nothing, and a study fingerprinted before they existed
    resumes unchanged (`sweeps/config/fingerprint.py`, `OPT_IN`)."""

    name: ScheduleName = "wsd"
    final_lr_fraction: float = 0.0  # the LR at the last planned update, as a fraction of peak
    decay_fraction: float | None = None  # wsd: the fraction of the plan that decays (default 0.2)
    cooldown_evaluations: bool = False  # wsd: rung evaluations on a short cooldown branch of the weights
    cooldown_fraction: float | None = None  # with them: the branch's updates / the updates done (default 0.1)
    # the warmup in updates, the same for every length (what budget.horizons need); replaces
    # search.warmup_fraction. Left out with horizons, the warmup is warmup_fraction of the longest
    # horizon's updates, then held fixed across the shorter ones
    warmup_updates: int | None = None

    def fill_defaults(self) -> None:
        if self.name == "wsd" and self.decay_fraction is None:
            self.decay_fraction = DEFAULT_DECAY_FRACTION
        if self.cooldown_evaluations and self.cooldown_fraction is None:
            self.cooldown_fraction = DEFAULT_COOLDOWN_FRACTION

    def validate(self, path: str) -> None:
        check(0 <= self.final_lr_fraction <= 1, join(path, "final_lr_fraction"), "must be in [0, 1]")
        if self.decay_fraction is not None:
            check(self.name == "wsd", join(path, "decay_fraction"),
                  f"applies only to schedule name wsd (name is {self.name})")
            check(0 < self.decay_fraction <= 1, join(path, "decay_fraction"),
                  f"must be in (0, 1] (got {self.decay_fraction:g})")
        check(not self.cooldown_evaluations or self.name == "wsd", join(path, "cooldown_evaluations"),
              f"needs schedule name wsd, whose stable phase a cooldown branch leaves (name is {self.name})")
        if self.warmup_updates is not None:
            check(self.warmup_updates >= 0, join(path, "warmup_updates"), f"must be >= 0 (got {self.warmup_updates})")
        if self.cooldown_fraction is not None:
            check(self.cooldown_evaluations, join(path, "cooldown_fraction"),
                  "applies only with cooldown_evaluations: true")
            check(0 < self.cooldown_fraction <= 1, join(path, "cooldown_fraction"),
                  f"must be in (0, 1] (got {self.cooldown_fraction:g})")


@dataclass
class EarlyStoppingSection:
    patience: int
    min_delta: float = 0.0

    def validate(self, path: str) -> None:
        check(self.patience >= 1, join(path, "patience"), "must be >= 1")
        check(self.min_delta >= 0, join(path, "min_delta"), "must be >= 0")


@dataclass
class DashboardSection:
    artifacts: str | None = None  # checkpoint folder; default: <SQLite file stem>-artifacts beside the store
    keep_checkpoints: int = 3  # the best trials whose best weights are kept as artifacts (0: none)
    notes: bool = True  # study and per-trial notes, and the report's figures, written for the dashboard

    def validate(self, path: str) -> None:
        check(self.keep_checkpoints >= 0, join(path, "keep_checkpoints"), "must be >= 0")


@dataclass
class MeasureSection:
    """What a trial measures beside its metric; each costs training time, so each is off by default."""

    noise_scale: bool = False  # B_simple at each evaluation (objectives/training/noise_scale.py)
    # the standard error of each evaluation, from its examples' values (objectives/training/loop.py);
    # costs one per-example metric per validation chunk; pruner.noise_margin turns it on too
    value_se: bool = False


@dataclass
class SweepConfig:
    study: StudySection
    objective: ObjectiveSection
    budget: BudgetSection
    search: SearchSection
    sampler: SamplerSection = field(default_factory=SamplerSection)
    pruner: PrunerSection = field(default_factory=PrunerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    early_stopping: EarlyStoppingSection | None = None
    dashboard: DashboardSection = field(default_factory=DashboardSection)
    measure: MeasureSection = field(default_factory=MeasureSection)
    base_dir: str = "."  # folder of the YAML file; relative SQLite paths resolve against it

    def validate(self, path: str) -> None:
        uses_adam_rule = "adam_sqrt" in self.search.couplings()
        if uses_adam_rule and self.objective.optimizer == "sgd":
            raise ConfigError(
                "search.coupling", "adam_sqrt scales Adam's betas and eps: it needs optimizer adam or adamw"
            )
        total = self.study.total_budget
        if total is not None:
            check(total.unit in (self.budget.unit, *TIME_UNITS), "study.total_budget.unit",
                  f"must be {self.budget.unit} (the budget's unit), or seconds or gpu_hours of training time; "
                  f"got {total.unit}")
        check(not (self.schedule.cooldown_evaluations and unit_named(self.budget.unit).timed),
              "schedule.cooldown_evaluations", "needs a counting budget (updates, examples, epochs or tokens), "
              "not seconds: a timed trial's schedule follows its clock")
        if self.budget.horizons is not None:
            self.validate_horizons()
        if self.search.lr_range_test is not None:
            self.validate_lr_range_test()
        if self.schedule.warmup_updates is not None:
            warm = self.search.warmup_fraction
            check(not isinstance(warm, FloatRange) and warm == 0, "schedule.warmup_updates",
                  "replaces search.warmup_fraction: set one of the two")
        if self.budget.unit == "examples":
            largest = max(self.search.batch_sizes())
            check(
                self.budget.per_trial >= largest,
                "budget.per_trial",
                f"{self.budget.per_trial:g} examples cannot hold one update of batch size {largest}",
            )
        if self.pruner.name == "hyperband" and not unit_named(self.budget.unit).timed:
            min_resource = self.pruner.min_resource or self.budget.eval_every
            check(
                min_resource <= self.budget.per_trial,
                "pruner.min_resource",
                "must be <= budget.per_trial",
            )

    def planned_per_trial(self) -> float:
        """What a trial trains in the budget's unit, its horizons' branches included (each about
        its decay: `decay_fraction` of its length); what the progress line counts a trial as."""
        horizons = self.budget.horizon_units()
        if horizons is None:
            return float(self.budget.per_trial)
        return float(self.budget.per_trial) + (self.schedule.decay_fraction or 0.0) * sum(horizons[:-1])

    def validate_horizons(self) -> None:
        """What exact horizons need (objectives/training/horizons.py): each is a finished decay
        branched off a shared stable phase, so the trial's length is answered, not searched."""
        path = "budget.horizons"
        check(not unit_named(self.budget.unit).timed, path,
              f"need a counting budget (updates, examples, epochs or tokens), not {self.budget.unit}: a timed "
              "trial's schedule follows its clock, which a branch cannot replay exactly")
        check(self.schedule.name == "wsd", path,
              f"need schedule name wsd, whose runs of every length share a stable phase (name is "
              f"{self.schedule.name}); set schedule.name: wsd or leave budget.horizons out")
        check(not self.schedule.cooldown_evaluations, path,
              "replace schedule.cooldown_evaluations (each horizon is a finished decay): turn one of them off")
        check(self.search.epochs is None, path,
              "answer the length, so it is not searched: leave search.epochs out (every trial trains to "
              "budget.per_trial and answers each horizon on the way)")

    def validate_lr_range_test(self) -> None:
        """What the measured LR prior needs (sweeps/search/prior.py): a range to centre, and a
        budget that counts, so its cost is a known share of the sweep."""
        path = "search.lr_range_test"
        lr = self.search.base_lr
        check(isinstance(lr, FloatRange) and lr.log and lr.low < lr.high, path,
              "centres a log-scale range: set search.base_lr to {low, high, log: true}")
        check(not unit_named(self.budget.unit).timed, path,
              f"needs a counting budget (updates, examples, epochs or tokens), not {self.budget.unit}: "
              "its cost is a share of the sweep's budget")
        tested, searched = self.search.lr_range_test.batch_sizes or [], self.search.batch_sizes()
        for b in tested:
            check(b in searched, f"{path}.batch_sizes",
                  f"{b} is not a searched batch size ({', '.join(map(str, searched))})")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        return data


def parse_config(data: Any, base_dir: str | Path = ".", overrides: Sequence[str] = ()) -> SweepConfig:
    """`overrides`: `--set KEY.PATH=VALUE` arguments, applied before validation (config/overrides.py)."""
    if not isinstance(data, dict):
        raise ConfigError("", f"the study file must be a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides) if overrides else dict(data)
    data.pop("base_dir", None)
    with blamed_on(overrides):
        config = build(SweepConfig, data, "")
    config.base_dir = str(Path(base_dir).resolve())
    return config


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError("", f"cannot read study file {path}: {err.strerror or err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError("", f"{path} is not valid YAML: {err}") from err
    return parse_config(data, base_dir=path.parent, overrides=overrides)
