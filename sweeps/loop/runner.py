"""Run a study to its total trial count, resuming whatever the store already holds."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
import torch

from objectives.registry import TaskError, TaskFactory, resolve_task
from objectives.task import Task, TrialSettings
from objectives.training.live import LiveTrial
from storage import open_storage, redact
from storage.ledger import LedgerUnitError, set_total
from storage.optuna_private import engine_of, study_id_of, study_storage
from storage.snapshot import SnapshotStorage
from storage.workers import register_worker
from sweeps.budget.ledger_view import line_of, no_ledger
from sweeps.budget.prior_books import prior_books
from sweeps.budget.spending import Spending
from sweeps.config.plan import budget_of, check_plan
from sweeps.config.study_file import SweepConfig
from sweeps.config.target import SweepTarget
from sweeps.errors import ConfigError, SweepFailed
from sweeps.loop.bookkeeping import finished_count
from sweeps.loop.fused_loop import fused_loop_for
from sweeps.loop.logs import TrialLog
from sweeps.loop.progress import Progress
from sweeps.publish.hooks import DashboardHooks
from sweeps.results.resume import ChangePolicy, complete_note, keep_search, stored_config
from sweeps.search.prior import use_prior
from sweeps.search.strategies import build_pruner, build_sampler
from sweeps.trial.record import (
    CONFIG_ATTR,
    CONFIRMS_STUDY_ATTR,
    OVERRIDES_ATTR,
    PROBED_MICRO_BATCH_ATTR,
    identity_attrs,
    study_unit_attrs,
)
from sweeps.trial.run_one import SweepObjective, build_task, resolve_device


def build_reference_task(config: SweepConfig, batch_size: int | None = None, device: torch.device | None = None,
                         factory: TaskFactory | None = None) -> Task:
    """The study's task built once outside any trial (to learn N, or to probe memory)."""
    factory = factory or resolve_task(config.objective.task, config.base_dir)
    search = config.search
    settings = TrialSettings(
        batch_size=batch_size or search.reference_batch_size, lr=search.reference_lr(),
        seed=config.study.seed, device=device or resolve_device(config.objective.device),
        options=dict(config.objective.options), base_dir=config.base_dir,
        maximize=config.study.direction == "maximize",
    )
    try:
        task = build_task(factory, settings)
    except Exception as err:
        name = config.objective.task
        raise TaskError(f"task {name!r} cannot be built: {type(err).__name__}: {err}") from err
    check_metric_name(task, config)
    return task


def check_metric_name(task: Task, config: SweepConfig) -> None:
    """study.metric labels the task's metric everywhere: it must name what the task measures."""
    produced, named = task.metric_name, config.study.metric
    if produced is not None and produced != named:
        raise ConfigError("study.metric", f"task {config.objective.task!r} measures {produced}, not {named}: "
                                          f"set study.metric: {produced}")


@dataclass(frozen=True)
class LoadedTask:
    """The study's task factory, resolved once per process, and N from its one reference build:
    loaded before any store is opened, so a broken task or bad data writes nothing."""

    factory: TaskFactory
    n_train: int
    tokens_per_example: int | None = None  # what a tokens budget counts per example


def load_task(config: SweepConfig, device: torch.device | None = None) -> LoadedTask:
    """A --gpus parent passes the CPU, so it holds no CUDA context on its workers' GPUs."""
    factory = resolve_task(config.objective.task, config.base_dir)
    task = build_reference_task(config, device=device, factory=factory)
    return LoadedTask(factory, task.n_train, task.tokens_per_example)


def resumed_seed(seed: int, trials_in_study: int) -> int:
    """The sampler seed of a process that joins a study already holding trials: deterministic
    for the same store, and a different stream for every resume point."""
    return (seed + trials_in_study * 1_000_003) % 2**32


def open_study(config: SweepConfig, target: SweepTarget, n_train: int,
               sampler_seed: int | None = None, overrides: Sequence[str] = (),
               changes: ChangePolicy = "check", seeded: bool = True) -> optuna.Study:
    """A new study records its config, and the `--set` overrides that made it (`overrides`).
    A study that exists must search what `config` searches, as `changes` says (results/resume.py).
    `seeded` False: the caller builds the sampler (`seed_sampler`, once it knows the worker's
    seed); until then the study holds a placeholder that costs nothing to build."""
    optuna.logging.set_verbosity(logging.WARNING)  # optuna's own info lines would break a command's output
    storage = SnapshotStorage(open_storage(target.storage_url, config.study.heartbeat_interval,
                                           config.study.grace_period, config.study.max_retry))
    seed = config.study.seed if sampler_seed is None else sampler_seed
    study = optuna.create_study(
        storage=storage,
        study_name=target.study_name,
        direction=config.study.direction,
        sampler=optuna.samplers.RandomSampler(),  # until `seed_sampler` builds the study's own
        pruner=build_pruner(config.pruner, budget_of(config), n_train, config.budget.horizon_units()),
        load_if_exists=True,
    )
    if target.confirms and study.user_attrs.get(CONFIRMS_STUDY_ATTR) != target.confirms:
        study.set_user_attr(CONFIRMS_STUDY_ATTR, target.confirms)  # before the ledger: a companion keeps none
    if study.direction.name.lower() != config.study.direction:
        raise optuna.exceptions.OptunaError(
            f"study {target.study_name!r} in {redact(target.storage_url)} was created to "
            f"{study.direction.name.lower()}, but the study file says {config.study.direction}"
        )
    if CONFIG_ATTR not in study.user_attrs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([config.study.metric])
        study.set_user_attr(CONFIG_ATTR, stored_config(config, target))
        if overrides:
            study.set_user_attr(OVERRIDES_ATTR, recorded_overrides(overrides))
        for key, value in study_unit_attrs(config.budget.unit).items():
            study.set_user_attr(key, value)
    keep_search(study, config, target, changes, recorded_overrides(overrides))
    open_ledger(study, config)
    use_prior(study, config, target.n_trials, prior_books(study, config))  # before the sampler sees the space
    if seeded:
        seed_sampler(study, config, seed)
    return study


def open_ledger(study: optuna.Study, config: SweepConfig) -> None:
    """Record `study.total_budget` in the store's ledger (each run may raise it). A companion of
    confirmation runs records none: its runs book against its main study's ledger, whose total
    only `sweeps run` sets (sweeps/budget/ledger_view.py: `ledger_study_id`)."""
    total, engine = config.study.total_budget, engine_of(study_storage(study))
    if total is not None and engine is None:
        raise no_ledger(study.study_name)  # never a sweep that ignores its total
    if total is None or engine is None or CONFIRMS_STUDY_ATTR in study.user_attrs:
        return
    try:
        set_total(engine, study_id_of(study), study.study_name, total.amount, total.unit)
    except LedgerUnitError as err:
        raise ConfigError("study.total_budget.unit", f"{err}: keep that unit (or start a new study)") from err


def recorded_overrides(overrides: Sequence[str]) -> list[str]:
    """The --set arguments as stored with the study: a store URL's password hidden, as in `config`."""
    recorded = []
    for text in overrides:
        key, sep, value = text.partition("=")
        if key.strip() == "study.storage" and value.strip():
            text = f"{key}{sep}{redact(value.strip())}"
        recorded.append(text)
    return recorded


def seed_sampler(study: optuna.Study, config: SweepConfig, seed: int) -> int:
    """Give the study a sampler drawing from `seed`'s stream; return the seed it draws from."""
    existing = len(study.get_trials(deepcopy=False))
    if existing:  # a resumed study: a fresh random stream, or the sampler replays the first trials' draws
        seed = resumed_seed(seed, existing)
    study.sampler = build_sampler(config.sampler, config.search, seed)
    return seed


@contextmanager
def a_core_for_bookkeeping() -> Iterator[None]:
    """Training leaves one core to the bookkeeper when torch would take them all: intra-op
    threads that share a core with a busy process wait on each other (measured on 2 cores: the
    digits MLP trained 37% slower in the sweep than alone with 2 threads, 4% with 1)."""
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads >= cores > 1:
        torch.set_num_threads(cores - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_sweep(config: SweepConfig, target: SweepTarget, show_progress: bool = True,
              worker_index: int | None = None, task: LoadedTask | None = None,
              overrides: Sequence[str] = (), changes: ChangePolicy = "check",
              is_worker: bool = False) -> optuna.Study:
    """Run until the study holds `target.n_trials` finished trials; return the study.

    Each worker of a shared study draws its own sampler seed, study.seed + its worker number:
    `worker_index` when given, else the next number registered in the store. `task`: the
    caller's `load_task(config)`, when it has one. `overrides`: the `--set` arguments `config`
    was loaded with, recorded with a new study. `changes`: what a changed search does
    (results/resume.py). `is_worker`: a child of `--workers`, whose parent checked the search and
    says how the study ended.
    """
    task = task or load_task(config)
    n_train, factory = task.n_train, task.factory
    check_plan(config, n_train, task.tokens_per_example)
    budget = budget_of(config, task.tokens_per_example)
    loop_class = fused_loop_for(config, factory, budget)  # objective.fuse: checked before the store opens
    study = open_study(config, target, n_train, overrides=overrides, changes="skip" if is_worker else changes,
                       seeded=False)  # seeded below, once, with the worker's seed
    # notes, checkpoints, figures
    hooks = DashboardHooks(config, target.storage_url, study, n_train, task.tokens_per_example)
    ledger_line = line_of(study) if config.study.total_budget else None
    live = LiveTrial() if show_progress else None  # made before the bookkeeper forks, so both see it
    progress = (Progress(target.n_trials, budget, config.study.metric, live_trial=live, ledger=ledger_line,
                         per_trial=config.planned_per_trial())
                if show_progress else None)
    if progress:
        progress.refresh(study)
    if finished_count(study) >= target.n_trials:
        if progress:
            progress(study, None)
        if not is_worker:
            print(complete_note(finished_count(study), target.n_trials))
        return study
    worker = worker_index if worker_index is not None else register_worker(study_storage(study), study_id_of(study))
    sampler_seed = seed_sampler(study, config, config.study.seed + worker)
    objective = SweepObjective(config, factory, budget, study.user_attrs.get(PROBED_MICRO_BATCH_ATTR))
    objective.identity = identity_attrs(worker, sampler_seed)
    objective.keeper = hooks.keeper
    objective.live = live
    loop = loop_class(study, config, objective, n_train, target.n_trials,
                     ([progress] if progress else []) + ([TrialLog(config.study.metric)] if TrialLog.wanted() else [])
                     + hooks.callbacks,
                     at_end=hooks.after_sweep, spending=Spending.of(config, budget, n_train), display=progress)
    try:
        with a_core_for_bookkeeping():
            loop.run()
    finally:
        if progress:
            progress.close()
    if loop.gave_up:
        raise SweepFailed(f"{loop.failures_in_a_row} trials in a row failed; last error: {loop.last_error}")
    return study
