"""The hook that trains horizons (`objectives.training.horizons`): every shorter horizon's decay
branched off the run at its branch point, evaluated as its dedicated run, and the run restored."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from objectives.training.batches import batch_len
from objectives.training.hooks import Hook
from objectives.training.horizons import Horizon, HorizonAnswers, HorizonResult
from objectives.training.options import Patience
from objectives.training.state import RunSnapshot

if TYPE_CHECKING:
    from objectives.training.loop import Trainer


class HorizonBranches(Hook):
    """Branches every shorter horizon's decay off the run (module docstring); the run is the
    longest horizon. Its results land in `TrainResult.horizons`, one per horizon, ascending."""

    seeks = True

    def __init__(self, units: Sequence[float]):
        self.units = tuple(units)

    def install(self, trainer: Trainer) -> None:
        self.trainer = trainer
        # the pruner sees finished horizons only
        self.answers = HorizonAnswers(self.units, trainer.budget, trainer.plan, trainer.schedule, trainer.reporter,
                                      trainer.sign)
        trainer.reporter = None
        trainer.result.horizons = self.answers.results
        trainer.result.horizon_seconds = 0.0

    def evaluated(self, step: int, value: float, se: float | None) -> None:
        self.answers.evaluated(self.trainer.result.updates, step, value, se)

    def update_ended(self, done: int) -> bool:
        while (horizon := self.answers.due(done)) is not None:
            if self.answers.answer(self.branch(horizon, done)):
                self.trainer.result.stop_reason = "pruned"
                return True
        return False

    def finished(self) -> None:
        run = self.trainer.result
        if self.answers.finish(run.updates, run.examples_seen, run.stop_reason):
            run.stop_reason = "pruned"

    def branch(self, horizon: Horizon, done: int) -> HorizonResult:
        """Train the horizon's decay from the run's state after `done` updates, and put it back."""
        trainer = self.trainer
        run = trainer.result
        started, evaluated = time.perf_counter(), run.eval_seconds
        state, stream, generator, device = trainer.state, trainer.stream, trainer.augment_generator, trainer.device
        snapshot = RunSnapshot.take(state, stream, generator, device)
        hooks = [(hook, hook.saved()) for hook in trainer.hooks if hook is not self]
        result = self.answers.shared(HorizonResult(horizon.units, horizon.end_step), done)
        result.updates, result.examples = done, run.examples_seen
        try:
            self.train_branch(horizon, result)
        finally:
            snapshot.restore(state, stream, generator, device)
            for hook, saved in hooks:
                hook.restore(saved)
            trainer.model.train()
            spent = time.perf_counter() - started - (run.eval_seconds - evaluated)
            result.branch_seconds = spent
            run.horizon_seconds += spent
        return result

    def train_branch(self, horizon: Horizon, result: HorizonResult) -> None:
        """Updates [branch_at, planned) of the horizon's plan, as `Trainer.run_batches` trains them."""
        trainer = self.trainer
        stream, augment, generator = trainer.stream, trainer.task.augment, trainer.augment_generator
        groups, lr_at, points = trainer.optimizer.param_groups, horizon.schedule.lr_at, horizon.points
        state, update_fn, within_memory = trainer.state, trainer.update, trainer.step.within_memory
        patience = copy.copy(trainer.patience)  # carried on from the run's, which stays as it is
        loss_sum = None
        for update in range(horizon.branch_at, horizon.plan.planned_updates):
            batch = next(stream)
            size = batch_len(batch)
            if augment is not None:
                batch = augment(batch, generator)
            lr = lr_at(update)
            for group in groups:
                group["lr"] = lr
            loss = within_memory(state, batch, update_fn)
            loss_sum = loss if loss_sum is None else loss_sum + loss
            done = update + 1
            result.updates, result.examples = done, result.examples + size
            result.branch_updates += 1
            result.branch_examples += size
            if done % trainer.check_every == 0 and not math.isfinite(loss_sum.item()):
                result.stop_reason = "diverged"
                return
            step = points.get(done)
            if step is not None:
                if not math.isfinite(loss_sum.item()):
                    result.stop_reason = "diverged"
                    return
                loss_sum = None
                if self.evaluate(result, step, patience):
                    if done == horizon.plan.planned_updates and result.stop_reason == "early_stopping":
                        result.stop_reason = horizon.plan.stop_reason  # as `Trainer.finish`: over anyway
                    return
        last = result.history[-1][0] if result.history else None
        if result.updates > 0 and (last is None or horizon.end_step > last):
            self.evaluate(result, horizon.end_step, patience)
            if result.stop_reason == "early_stopping":
                result.stop_reason = "budget"  # the run was over anyway

    def evaluate(self, result: HorizonResult, step: int, patience: Patience) -> bool:
        """One evaluation of the branch, as the dedicated run's; True when that run would stop."""
        value, se = self.trainer.evaluate()
        result.history.append((step, value))
        if not math.isfinite(value):
            result.stop_reason = "diverged"
            return True
        if result.value is None or self.trainer.sign * (value - result.value) > 0:
            result.value, result.best_step, result.value_se = value, step, se
        if patience.exhausted(value):
            result.stop_reason = "early_stopping"
            return True
        return False
