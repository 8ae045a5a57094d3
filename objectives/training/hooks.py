"""The loop's instruments, as hooks at named points of `Trainer.run_batches` rather than flags
inside it. Off, an instrument is absent: the loop runs exactly as without it.

The points, in the order a run meets them:
- `install(trainer)`: once, before the first update. A hook sets up its result fields; it may
  take over the update (`trainer.update`, a function of (state, batch)) or the evaluation at a
  grid point (`trainer.evaluate_at`, a function of (step, updates done) that returns True when
  the trial must stop);
- `after_update(done, spent)`: after each update (`spent`: the seconds trained, timed budgets only);
- `evaluated(step, value, se)`: after each evaluation, before the best value and the reporter see it;
- `update_ended(done)`: after the update and its evaluation, if any (and once with 0 before the
  first update); True stops the trial (`horizon_branches.HorizonBranches` branches its decays here);
- `finished()`: once, after the run's last evaluation, before the best weights are restored.

A hook with state that training reads (`NoiseScaleMeasure`'s averages, which decide the next
measured update) hands a copy from `saved()` and takes it back in `restore(saved)`, so a branch
that trains off the run and returns leaves it as it found it.

A hook that returns to earlier run states (`seeks`) gets a data stream whose position can be saved
(`objectives.training.stream`) and snapshots of the whole run (`objectives.training.state`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from objectives.task import Task, per_example_metric
from objectives.training.batches import Batch, batch_len, split
from objectives.training.budget import eval_window
from objectives.training.live import SECONDS, UPDATES, LiveTrial
from objectives.training.noise_scale import GradientParts, NoiseScale
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule, cooled
from objectives.training.state import RunSnapshot
from objectives.training.step import Step, TrainState

if TYPE_CHECKING:
    from objectives.training.loop import Trainer


class Hook:
    """One instrument; it overrides the points it needs (the loop calls only those)."""

    seeks: ClassVar[bool] = False  # returns to saved run states: the stream must keep its position

    def install(self, trainer: Trainer) -> None:
        pass

    def after_update(self, done: int, spent: float) -> None:
        pass

    def evaluated(self, step: int, value: float, se: float | None) -> None:
        pass

    def update_ended(self, done: int) -> bool:
        return False

    def finished(self) -> None:
        pass

    def saved(self) -> object:
        return None

    def restore(self, saved: object) -> None:
        pass


def overrides(hook: Hook, point: str) -> bool:
    return getattr(type(hook), point) is not getattr(Hook, point)


class LiveRecord(Hook):
    """How far the trial is, where a display in another process reads it (one store per update, no lock)."""

    def __init__(self, live: LiveTrial):
        self.live = live

    def install(self, trainer: Trainer) -> None:
        self.values, self.timed = self.live.values, trainer.budget.timed

    def after_update(self, done: int, spent: float) -> None:
        self.values[UPDATES] = done
        if self.timed:
            self.values[SECONDS] = spent

    def evaluated(self, step: int, value: float, se: float | None) -> None:
        self.live.evaluated(step, value)


class NoiseScaleMeasure(Hook):
    """The gradient noise scale B_simple (`noise_scale.py`), measured from the micro-batches on one
    update in `noise.every` and recorded at each evaluation. A batch that is not split is then
    trained as two half micro-batches: the same update, no extra pass."""

    def install(self, trainer: Trainer) -> None:
        self.step = trainer.step
        self.noise = NoiseScale(trainer.device, eval_window(trainer.plan, trainer.budget), self.step.accumulation > 1)
        self.gradients = GradientParts([p for p in trainer.model.parameters() if p.requires_grad])
        self.curve = trainer.result.noise_scale_curve = []
        trainer.update = self.measured_step

    def measured_step(self, state: TrainState, batch: Batch) -> Tensor:
        step = self.step
        if not self.noise.due():
            return step(state, batch)
        n = batch_len(batch)
        if n < 2:
            return step(state, batch)
        loss, norms = split_gradients(step, state, batch, self.gradients)
        self.noise.add(norms, n)
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        return loss

    def evaluated(self, step: int, value: float, se: float | None) -> None:
        noise_scale = self.noise.value()
        if noise_scale is not None:
            self.curve.append((step, noise_scale))

    def saved(self) -> object:
        noise = self.noise
        return noise.averages.clone(), noise.measurements, noise.updates

    def restore(self, saved: object) -> None:
        averages, self.noise.measurements, self.noise.updates = saved
        self.noise.averages.copy_(averages)


def split_gradients(step: Step, state: TrainState, batch: Batch,
                    gradients: GradientParts) -> tuple[Tensor, list[list[Tensor]]]:
    """One update's gradient over `batch` (at least 2 examples) into `.grad`, in max(accumulation,
    2) micro-batches, each one's gradient kept apart long enough for its norms (`GradientParts`):
    the same sum plain accumulation gives. Returns the loss and the norms, each micro-batch's then
    the whole batch's, as `NoiseScale.add` takes them. The optimizer is not stepped."""
    n = batch_len(batch)
    loss = torch.zeros((), device=step.device)
    norms = []
    for i, part in enumerate(split(batch, min(max(step.accumulation, 2), n))):
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
    return loss, norms


class ValueStandardError(Hook):
    """Each evaluation's standard error, from the task's per-example metric in the same pass
    (SE = sd / sqrt(n_val)); the evaluation sums the values and their squares when it is set."""

    def __init__(self, per_example):
        self.per_example = per_example

    def install(self, trainer: Trainer) -> None:
        trainer.per_example = self.per_example
        self.curve = trainer.result.value_se_curve = []

    def evaluated(self, step: int, value: float, se: float | None) -> None:
        self.curve.append((step, se))


class CooldownBranches(Hook):
    """Cooldown evaluations (a wsd schedule): a grid evaluation before the trial's own decay is made
    on a short branch. The whole run state is saved (`RunSnapshot`), n = fraction x done updates
    (at least one) train on the next batches with the LR going 1-sqrt from the current one towards
    zero (update i of n at progress i / (n + 1), so even a one-update branch cools and none is spent
    at LR zero), the branch is evaluated and reported, and the state is restored: the main run then
    trains on those same batches, drawn again, as if no branch had run."""

    seeks = True

    def __init__(self, fraction: float):
        self.fraction = fraction

    def install(self, trainer: Trainer) -> None:
        self.trainer = trainer
        result = trainer.result
        result.cooldown_updates, result.cooldown_examples, result.cooldown_seconds = 0, 0, 0.0
        trainer.evaluate_at = self.evaluate_at

    def evaluate_at(self, step: int, done: int) -> bool:
        trainer = self.trainer
        if done >= trainer.schedule.decay_start:
            return trainer.evaluate_and_report(step)
        return self.branch(step, done)

    def branch(self, step: int, done: int) -> bool:
        trainer, result = self.trainer, self.trainer.result
        started, evaluated = time.perf_counter(), result.eval_seconds
        state, stream, generator, device = trainer.state, trainer.stream, trainer.augment_generator, trainer.device
        snapshot = RunSnapshot.take(state, stream, generator, device)
        augment, groups = trainer.task.augment, state.optimizer.param_groups
        start_lr = groups[0]["lr"]  # the last update's, as the schedule set it
        n = max(1, round(self.fraction * done))
        try:
            for i in range(n):
                batch = next(stream)
                result.cooldown_examples += batch_len(batch)
                if augment is not None:
                    batch = augment(batch, generator)
                lr = cooled(start_lr, (i + 1) / (n + 1))  # below the current LR, zero one update past the end
                for group in groups:
                    group["lr"] = lr
                trainer.step.within_memory(state, batch)  # the plain step: the noise measurement is left alone
                result.cooldown_updates += 1
            return trainer.evaluate_and_report(step)
        finally:
            snapshot.restore(state, stream, generator, device)
            result.cooldown_seconds += time.perf_counter() - started - (result.eval_seconds - evaluated)


def instruments(options: TrainerOptions, task: Task, schedule: Schedule, live: LiveTrial | None) -> list[Hook]:
    """The hooks the options switch on (an instrument a task or schedule cannot serve stays off)."""
    hooks: list[Hook] = []
    if live is not None:
        hooks.append(LiveRecord(live))
    if options.measure_noise:
        hooks.append(NoiseScaleMeasure())
    per_example = per_example_metric(task) if options.measure_value_se else None
    if per_example is not None:
        hooks.append(ValueStandardError(per_example))
    if options.cooldown_fraction is not None and schedule.shape == "wsd":
        hooks.append(CooldownBranches(options.cooldown_fraction))
    if options.horizons:
        from objectives.training.horizon_branches import HorizonBranches  # it builds on this module's Hook

        hooks.append(HorizonBranches(options.horizons))
    return hooks
