"""The LR range test of a measured prior (`search.lr_range_test`; what it gives the search, and
why: sweeps/search/prior.py).

From the study seed's initialisation, at each tested batch size, the trials' training step
(precision, micro-batches) trains the same number of updates on random batches of the training
data, the LR rising geometrically from a tenth of `base_lr.low` to ten times `base_lr.high`; the
LR at which the smoothed loss was least is that batch size's `lr_min`. With `cap_batch`, each
update's batch is split in two halves (`hooks.split_gradients`, as `measure.noise_scale` splits a
trial's) and the gradient noise scale is averaged over the updates up to that LR. The global RNG
is put back.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch

from objectives.registry import resolve_task
from objectives.task import Task, TrialSettings
from objectives.training.batches import batch_len, to_device
from objectives.training.budget import plan_trial
from objectives.training.coupling import Coupled
from objectives.training.data import LoaderOptions, make_loader
from objectives.training.hooks import split_gradients
from objectives.training.noise_scale import GradientParts, estimates, mean_noise_scale
from objectives.training.state import GlobalRng
from objectives.training.step import Step, TrainState, micro_batches
from sweeps.config.plan import budget_of
from sweeps.config.study_file import SweepConfig
from sweeps.errors import ConfigError
from sweeps.search.prior import MeasuredPrior, batch_cap, fit, placed, sizes_to_test
from sweeps.trial.run_one import build_optimizer, build_task, resolve_device

WIDENING = 10.0  # the test's LRs run from the range's low / 10 to its high x 10
SMOOTHING = 0.8  # the smoothed loss: this weight on its past, 1 - this on each update's loss
DIVERGED = 4.0  # the test stops once the smoothed loss exceeds this multiple of its least
MIN_UPDATES = 10
MAX_UPDATES = 200


def built(config: SweepConfig, factory, batch_size: int, device: torch.device) -> Task:
    """The study's task at `batch_size`, its model initialised from the study seed."""
    torch.random.default_generator.manual_seed(config.study.seed)
    settings = TrialSettings(batch_size=batch_size, lr=config.search.reference_lr(), seed=config.study.seed,
                             device=device, options=dict(config.objective.options), base_dir=config.base_dir,
                             maximize=config.study.direction == "maximize")
    return build_task(factory, settings).to(device)


def measure(config: SweepConfig, n_trials: int,
            check: Callable[[MeasuredPrior], None] | None = None) -> tuple[MeasuredPrior, float]:
    """The range test at each tested batch size; returns the prior and the budget it is a share
    of, in examples (n_trials full trials at the middle searched batch size). `check` sees the
    prior's cost before any test trains (its LRs not yet measured), and may refuse it."""
    section, search = config.search.lr_range_test, config.search
    device = resolve_device(config.objective.device, config.objective.gpu_memory_fraction)
    factory = resolve_task(config.objective.task, config.base_dir)
    sizes = sizes_to_test(search)
    rng = GlobalRng.take(device)
    try:
        searched_sizes = sorted(set(search.batch_sizes()))
        middle = searched_sizes[len(searched_sizes) // 2]
        first = built(config, factory, sizes[0], device)  # its N and tokens per example count the budget
        budget = budget_of(config, first.tokens_per_example)
        plan = plan_trial(budget, first.n_train, middle, None, config.objective.drop_last)
        study_examples = n_trials * plan.planned_examples
        updates = min(MAX_UPDATES, int(section.budget_fraction * study_examples // sum(sizes)))
        if updates < MIN_UPDATES:
            raise ConfigError("search.lr_range_test.budget_fraction",
                              f"{section.budget_fraction:g} of {n_trials} trials buys {updates} updates per batch "
                              f"size, fewer than {MIN_UPDATES}: raise it, or study.n_trials")
        planned = MeasuredPrior(sizes, (), updates, updates * sum(sizes), math.nan, "", math.nan, math.nan,
                                n_train=first.n_train, tokens_per_example=first.tokens_per_example)
        if check is not None:
            check(planned)
        low, high = search.base_lr.low / WIDENING, search.base_lr.high * WIDENING
        started = time.perf_counter()
        found: list[float] = []
        scales: list[float | None] = []
        for b in sizes:
            task = first if b == sizes[0] else built(config, factory, b, device)
            optimizer = build_optimizer(config.objective, task.model.parameters(), Coupled(low))
            step = Step(task, device, precision=config.objective.precision,
                        accumulation=micro_batches(b, config.objective.max_micro_batch))
            lr_min, noise_scale = range_test(task, step, TrainState(task.model, optimizer), b, updates, low, high,
                                             config.study.seed, device, section.cap_batch)
            found.append(lr_min)
            scales.append(noise_scale)
        seconds = time.perf_counter() - started
    finally:
        rng.restore(device)
    exponent, rule, centre = fit(sizes, found, search.reference_batch_size)
    lo, hi = placed(centre / section.below, section.span, search.base_lr.low, search.base_lr.high)
    capped = {}
    if section.cap_batch:
        capped = {"noise_scales": tuple(scales), "batch_high": batch_cap(searched_sizes, scales)}
    prior = dataclasses.replace(planned, lr_min=tuple(found), exponent=exponent, coupling=rule, low=lo, high=hi,
                                seconds=round(seconds, 3), **capped)
    return prior, study_examples


def range_test(task, step: Step, state: TrainState, batch_size: int, updates: int, low: float, high: float,
               seed: int, device: torch.device, noise: bool = False) -> tuple[float, float | None]:
    """The LR of least smoothed training loss over `updates` updates, the LR rising from `low` to
    `high` geometrically; with `noise`, also B_simple over the updates up to that one (None when
    not measurable: a batch of one, or |G|^2 lost in the noise), each update's batch split in two."""
    gradients = None
    if noise and batch_size >= 2:
        gradients = GradientParts([p for p in state.model.parameters() if p.requires_grad])
    measured: list[torch.Tensor] = []
    smoothed, least, at, upto = None, math.inf, low, 0
    for i, batch in zip(range(updates), batches(task, batch_size, seed, device)):
        lr = low * (high / low) ** (i / max(updates - 1, 1))
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        if gradients is None:
            loss = float(step(state, batch))
        else:
            update_loss, norms = split_gradients(step, state, batch, gradients)
            measured.append(estimates(norms, batch_len(batch)))
            state.optimizer.step()
            state.optimizer.zero_grad(set_to_none=True)
            loss = float(update_loss)
        if not math.isfinite(loss):
            break
        smoothed = loss if smoothed is None else SMOOTHING * smoothed + (1 - SMOOTHING) * loss
        if smoothed < least:
            least, at, upto = smoothed, lr, i + 1
        elif smoothed > DIVERGED * least:
            break
    return at, mean_noise_scale(measured[:upto])


def batches(task, batch_size: int, seed: int, device: torch.device):
    """Random batches of the training data, endlessly: tensors drawn with a generator of the
    study seed, a Dataset in a seeded shuffled order (loaded in this process)."""
    train = task.train
    if isinstance(train, tuple | list):
        generator = torch.Generator(device=train[0].device).manual_seed(seed)
        n = len(train[0])
        while True:
            idx = torch.randint(0, n, (batch_size,), device=train[0].device, generator=generator)
            yield to_device(tuple(t[idx] for t in train), device)
    loader = make_loader(train, batch_size, LoaderOptions(workers=0), device, seed=seed, shuffle=True)
    while True:
        for batch in loader:
            yield to_device(batch, device)
