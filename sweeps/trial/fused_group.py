"""Trials of a sweep trained as fused groups (`objective.fuse`, issue 26, docs/guide/fused_training.md): what a
group's member is built from, what it records, whether a study can fuse at all, and how `auto`
picks the group size. The loop that asks, trains and tells the members is
`sweeps.loop.fused_loop`; the fused training itself is `objectives.training.fused`.

A member is built exactly as the trial alone is (`SweepObjective.prepare`: its coupling, its
model under its own seed, its plan and schedule) and recorded exactly as the trial alone is
(`SweepObjective.run`'s attributes, curve, checkpoint and state), plus `fused_group` and
`fused_size` (sweeps/trial/record.py).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from optuna.trial import TrialState

from objectives.registry import TaskFactory
from objectives.task import TrialSettings
from objectives.training.budget import Budget, plan_trial
from objectives.training.coupling import Coupled
from objectives.training.fused import FusedMember, MemberOptimizer, fuse_models, stacked_optimizer
from objectives.training.fused.batched import member_losses
from objectives.training.fused.direct import direct_fits, member_gradients
from objectives.training.fused.orders import gather
from objectives.training.fused.refusal import options_refusal, refusal
from objectives.training.loop import Reporter, TrainResult
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule
from objectives.training.step import autocast_for, micro_batches
from sweeps.config.study_file import IntRange, ObjectiveSection, SearchSection, SweepConfig
from sweeps.search.space import Suggestion
from sweeps.trial import record
from sweeps.trial.run_one import Outcome, PreparedTrial, SweepObjective, build_task, plan_attrs

AUTO_SIZES = (1, 2, 4, 8, 16)  # what `auto` measures
AUTO_SECONDS = 0.05  # per size measured (and at least AUTO_UPDATES updates)
AUTO_UPDATES = 5
# auto's largest group: a tenth of the study's trials. A group asks all its trials before any
# reports, so the sampler learns from fewer results; a tenth is a judgement, not a measured
# optimum (docs/guide/fused_training.md has the whole-sweep figures).
AUTO_SHARE = 10


def auto_cap(n_trials: int) -> int:
    return max(1, n_trials // AUTO_SHARE)


def fix_params(trial, params: dict) -> None:
    """Make a trial just asked take `params` as given, the sampler drawing the rest: what
    `study.enqueue_trial(params=...)` does for a queued trial, without queueing one another worker
    could take. Kept out of the store (a retry of the trial takes all its parameters). A queued
    trial (a retry, a confirmation run) keeps its own."""
    if not trial._fixed_params:  # Optuna's: read from the system attribute `fixed_params` when asked
        trial._fixed_params = dict(params)


def batch_params(search: SearchSection, batch_size: int) -> dict:
    """The parameters that fix a trial's batch size (`sweeps.search.space.suggest_batch_size`)."""
    spec = search.batch_size
    if isinstance(spec, IntRange) and spec.power_of_two:
        return {"batch_size_log2": int(math.log2(batch_size))}
    if isinstance(spec, IntRange) and spec.low == spec.high or isinstance(spec, int):
        return {}
    if isinstance(spec, list) and len(spec) == 1:
        return {}
    return {"batch_size": batch_size}


def member_optimizer(section: ObjectiveSection, coupled: Coupled) -> MemberOptimizer:
    """The trial's optimizer settings, as `run_one.build_optimizer` gives them to torch.optim."""
    return MemberOptimizer(section.optimizer, momentum=section.momentum if section.optimizer == "sgd" else 0.0,
                           weight_decay=section.weight_decay, betas=tuple(coupled.betas or section.betas),
                           eps=coupled.eps or section.eps)


@dataclass
class Member:
    """One trial in a group: what it was built from and the outcome it will record."""

    trial: object  # TrialRef
    prepared: PreparedTrial
    fused: FusedMember
    outcome: Outcome
    asked: object = None  # sweeps.loop.sweep_loop.Asked, set by the loop


def build_member(objective: SweepObjective, trial, point: Suggestion, pruner: Reporter) -> Member | Outcome:
    """The member for an asked trial, or the failed outcome it records when it cannot be built
    (as `SweepObjective.run` records a trial that crashes before training)."""
    outcome = Outcome(TrialState.FAIL, attrs=dict(objective.identity))
    try:
        prepared = objective.prepare(trial, point, optimizer=False)  # it trains with the group's
        outcome.attrs.update(plan_attrs(prepared, objective.device))
    except Exception as err:
        outcome.attrs.update(record.error_attrs(f"{type(err).__name__}: {err}"[:2000]))
        outcome.error = err
        return outcome

    def report(value: float, step: int, value_se: float | None) -> bool:
        outcome.curve[step] = value
        return pruner(value, step, value_se)

    fused = FusedMember(prepared.task, member_optimizer(objective.config.objective, prepared.coupled),
                        prepared.schedule, prepared.plan, prepared.seed, report, trial=trial.number)
    return Member(trial, prepared, fused, outcome)


def finish_member(objective: SweepObjective, member: Member, result: TrainResult, group: str, size: int) -> Outcome:
    """The member's outcome once it left the group: `SweepObjective.run`'s, and its group."""
    outcome, prepared = member.outcome, member.prepared
    outcome.attrs.update(record.result_attrs(result, prepared.plan))
    outcome.attrs.update(record.fused_attrs(group, size))
    if objective.keeper is not None and result.stop_reason not in ("pruned", "diverged", "oom"):
        outcome.checkpoint = objective.keeper.offer(member.trial, prepared.task.model, result.best_value,
                                                    outcome.attrs)
    if result.stop_reason in ("pruned", "diverged") or result.best_value is None:
        outcome.state = TrialState.PRUNED
    else:
        outcome.state, outcome.value = TrialState.COMPLETE, result.best_value
    return outcome


def fail_member(member: Member, err: BaseException, group: str, size: int) -> Outcome:
    """The outcome of a member whose group failed while it trained."""
    outcome = member.outcome
    outcome.attrs.update(record.fused_attrs(group, size))
    outcome.attrs.update(record.error_attrs(f"{type(err).__name__} in a fused group: {err}"[:2000]))
    outcome.error = err
    outcome.state = TrialState.FAIL
    return outcome


def settings_refusal(config: SweepConfig, budget: Budget, options: TrainerOptions) -> str | None:
    """Why this study's settings keep its trials from training as fused groups (None: they do not)."""
    reason = options_refusal(options, budget)
    if reason is not None:
        return reason
    objective = config.objective
    for on, why in ((config.sampler.name == "grid", "the grid sampler sets each trial's batch size itself"),
                    (objective.compile, "objective.compile: a compiled model is not stacked")):
        if on:
            return why
    return None


def task_refusal(config: SweepConfig, factory: TaskFactory, budget: Budget, options: TrainerOptions,
                 device: torch.device) -> str | None:
    """Why this study's task cannot train as fused groups (None: it can). The task is built
    twice, under two seeds, as two trials build it: data or an architecture that follows the seed
    does not fuse (one that follows a trial's parameters is caught when its group forms). A task
    that cannot fuse alone (its data a Dataset, or augmented) is refused after its first build."""
    objective = config.objective
    search = config.search
    batch = search.reference_batch_size
    members = []
    for seed in (config.study.seed, config.study.seed + 1):
        torch.random.default_generator.manual_seed(seed)
        settings = TrialSettings(batch_size=batch, lr=search.reference_lr(), seed=seed, device=device,
                                 options=dict(objective.options), base_dir=config.base_dir,
                                 maximize=config.study.direction == "maximize")
        try:
            task = build_task(factory, settings)
        except Exception as err:
            return f"the task cannot be built for a check: {type(err).__name__}: {err}"
        task.to(device)
        plan = plan_trial(budget, task.n_train, batch, None, objective.drop_last)
        schedule = Schedule.build(settings.lr, plan.planned_updates, 0.0, "constant", 1.0)
        members.append(FusedMember(task, MemberOptimizer(objective.optimizer), schedule, plan, seed))
        reason = refusal(members, options, budget)  # a Dataset or augmenting task: refused on its first build
        if reason is not None:
            return reason
    return None


def measure_size(member: Member, options: TrainerOptions, sizes: tuple[int, ...] = AUTO_SIZES,
                 seconds: float = AUTO_SECONDS) -> tuple[int, dict[int, float]]:
    """`auto`'s group size for this member's model and batch size: a few fused updates timed at
    each size (copies of its model, random batches from a generator of its own, so the trial's
    draws are untouched), the size with the most trials' updates per second. Stops early once a
    size gives less than 0.9 of the best. Returns the size and the rate measured at each."""
    task, plan = member.prepared.task, member.prepared.plan
    (x, y), device = task.train, task.train[0].device
    loss = member_losses(task.loss, y)  # the fused loop's update, as it runs it
    generator = torch.Generator(device=device).manual_seed(0)
    autocast, accumulation = autocast_for(device, options.precision), micro_batches(plan.batch_size,
                                                                                     options.max_micro_batch)
    rates: dict[int, float] = {}
    for k in sizes:
        models = [copy.deepcopy(task.model) for _ in range(k)]
        model = fuse_models(models)
        optimizer = stacked_optimizer(model.weights.param_list(), [member.fused.optimizer] * k)
        optimizer.lrs = [0.0] * k  # the timing needs no learning
        direct = direct_fits(model, loss, options.precision)
        done, started = -1, 0.0  # the first update warms up, untimed
        while True:
            idx = torch.randint(0, plan.n_train, (k, plan.batch_size), generator=generator, device=device)
            member_gradients(model, loss, gather(x, idx), gather(y, idx), direct, autocast, accumulation)
            optimizer.step()
            optimizer.zero_grad()
            done += 1
            if done == 0:
                synchronize(device)
                started = time.perf_counter()
            elif done >= AUTO_UPDATES and time.perf_counter() - started >= seconds:
                break
        synchronize(device)  # a GPU's queued kernels are part of the time
        rates[k] = k * done / (time.perf_counter() - started)
        if rates[k] < 0.9 * max(rates.values()):
            break
    best = max(rates, key=lambda k: rates[k])
    return best, rates


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def size_line(batch_size: int, k: int, rates: dict[int, float], cap: int) -> str:
    measured = ", ".join(f"K={size} {rate:.0f}/s" for size, rate in rates.items())
    return (f"objective.fuse auto: batch {batch_size} trains in groups of {k} (trial updates per second: {measured}; "
            f"at most {cap}, a tenth of the study's trials)")
