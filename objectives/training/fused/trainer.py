"""The fused loop: K members (trials of one architecture and batch size) train as one model, one
forward and one backward per update over all of them, each with its own data order, LR schedule,
optimizer settings, evaluations, best weights, pruning, early stopping and divergence.

What each member gets is what `Trainer` gives a trial run alone (`TrainResult`, its reporter
called at the same steps with the same values, its best weights restored into its own model), up
to how the fused kernels round (none on the CPU without dropout: tests/test_fused.py). A member
that stops (its plan done, pruned, early-stopped, diverged) leaves the group at once: its slices
are dropped from the weights and the optimizer, and the others go on as they were. The loss is
the sum of the members' mean losses, so each member's gradient is its own; every op is per member
or elementwise, so a NaN stays in the member it arose in (which then leaves as diverged).

Members start together and share the batch size and the training set, so every update's batches
have one length (the last of an epoch is shorter for all of them at once).

With horizons (`budget.horizons`, objectives/training/horizons.py) each member answers every
length as a run alone does: the members whose horizon's decay leaves their run after this update
branch together, as a group of their own (copies of their slices of the weights and optimizer, and
of their data orders), which trains each one's decay with its own schedule, evaluates it on its
dedicated run's grid and is dropped; the group goes on as if no branch had run. The pruner sees
each member's finished horizons only, as it does a run alone's.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from objectives.task import Task, per_example_metric
from objectives.training.budget import Budget, TrialPlan, eval_points, eval_window
from objectives.training.fused.batched import member_losses, member_metrics
from objectives.training.fused.direct import direct_fits, gradients_of, member_gradients
from objectives.training.fused.model import FusedModel, NotFusable, fuse_models
from objectives.training.fused.optim import MemberOptimizer, stacked_optimizer
from objectives.training.fused.orders import GroupOrders, MemberOrder, gather
from objectives.training.fused.refusal import refusal
from objectives.training.horizons import Horizon, HorizonAnswers, HorizonResult
from objectives.training.live import UPDATES, LiveTrial
from objectives.training.loop import Reporter, TrainResult
from objectives.training.noise_scale import GradientParts, NoiseScale
from objectives.training.options import Patience, TrainerOptions
from objectives.training.schedule import Schedule
from objectives.training.state import GlobalRng
from objectives.training.step import autocast_for, halved, micro_batches


@dataclass
class FusedMember:
    """One trial in a fused group: its task (the model built under its own seed, as the trial alone
    builds it), optimizer settings, schedule, plan, seed (its data order) and reporter."""

    task: Task
    optimizer: MemberOptimizer
    schedule: Schedule
    plan: TrialPlan
    seed: int
    reporter: Reporter | None = None
    joined_with: int = 0  # the members training together when it joined, itself included (set by the trainer)
    trial: int | None = None  # its trial's number, for the live display


class MemberRun:
    """One member's state in the loop: its counts, grid, patience, best weights and result. With
    horizons, what they answered (`answers`), which alone its reporter sees; a horizon's branch is
    a run of its own (`branch`: no horizons, no best weights kept, no reporter)."""

    def __init__(self, member: FusedMember, budget: Budget, options: TrainerOptions, device: torch.device,
                 branch: bool = False):
        self.member, self.plan, self.budget, self.branch = member, member.plan, budget, branch
        self.sign = 1.0 if options.maximize else -1.0
        self.result = TrainResult(micro_batch=member.plan.batch_size)
        self.points = eval_points(member.plan, budget)
        self.order = MemberOrder(member.plan, torch.Generator(device=device).manual_seed(member.seed))
        self.patience = Patience(options.early_stopping, self.sign)
        self.best_state: dict[str, Tensor] | None = None
        self.best_se: float | None = None  # the best evaluation's standard error, when measured
        self.noise: NoiseScale | None = None  # with measure.noise_scale: its B_simple averages
        self.losses = 0  # updates since the last evaluation
        self.started = 0.0  # when it joined the group (perf_counter)
        self.reporter, self.answers = member.reporter, None
        if options.horizons and not branch:
            self.answers = HorizonAnswers(options.horizons, budget, member.plan, member.schedule, member.reporter,
                                          self.sign)
            self.reporter = None  # the pruner sees finished horizons only
            self.result.horizons, self.result.horizon_seconds = self.answers.results, 0.0

    def report(self, step: int, value: float, weights: Callable[[], dict[str, Tensor]],
               se: float | None = None) -> bool:
        """`Trainer.evaluate_and_report` for this member (`weights()` copies its slice; `se`: the
        evaluation's standard error, when measured); True: it stops."""
        result = self.result
        result.history.append((step, value))
        if result.noise_scale_curve is not None and (noise_scale := self.noise.value()) is not None:
            result.noise_scale_curve.append((step, noise_scale))  # as `hooks.NoiseScaleMeasure` records it
        if result.value_se_curve is not None:
            result.value_se_curve.append((step, se))  # as `hooks.ValueStandardError` records it
        if self.answers is not None:
            self.answers.evaluated(result.updates, step, value, se)
        if not math.isfinite(value):
            result.stop_reason = "diverged"
            return True
        if result.best_value is None or self.sign * (value - result.best_value) > 0:
            result.best_value, result.best_step, self.best_se = value, step, se
            if not self.branch:
                self.best_state = weights()
        reporter = self.reporter
        if reporter is not None and reporter(value, step, se):
            result.stop_reason = "pruned"
            return True
        if self.patience.exhausted(value):
            result.stop_reason = "early_stopping"
            return True
        return False

    def end_step(self) -> int:
        """`Trainer.end_step`: the report step of the member's last update."""
        if self.result.stop_reason == "budget":
            return self.budget.to_step(self.budget.per_trial, self.plan.n_train)
        units = self.budget.kind.trained(self.result, self.plan, self.budget)
        return self.budget.to_step(units, self.plan.n_train)

    def needs_final_evaluation(self) -> bool:
        """Ended by its plan off the grid: `Trainer.finish` evaluates once more."""
        if self.result.stop_reason not in ("budget", "epochs") or self.result.updates == 0:
            return False
        return not self.result.history or self.end_step() > self.result.history[-1][0]


class FusedTrainer:
    """`train()` trains every member and returns their results, in the members' order.
    `path`: how the models are fused (`fuse_models`: auto, bmm, vmap); `model.path` says which ran."""

    def __init__(self, members: Sequence[FusedMember], budget: Budget, options: TrainerOptions, *,
                 path: str = "auto", refill: Callable[[], FusedMember | None] | None = None,
                 on_leave: Callable[[FusedMember, TrainResult], None] | None = None,
                 live: LiveTrial | None = None):
        """`refill`: called for a new member when one has left (None: there is none, and the group
        shrinks from then on); it must return a member that fuses with the others (`refusal`).
        `on_leave`: called with each member and its result as it leaves, its best weights loaded.
        `live`: the progress display's record, which shows the group's first member and its size."""
        reason = refusal(members, options, budget)
        if reason is not None:
            raise NotFusable(reason)
        first = members[0].task
        self.members, self.budget, self.options = list(members), budget, options
        self.train_data, self.val_data = first.train, first.val
        self.device = first.train[0].device
        self.model: FusedModel = fuse_models([m.task.model for m in members], path)
        self.optimizer = stacked_optimizer(self.model.weights.param_list(), [m.optimizer for m in members])
        self.autocast = autocast_for(self.device, options.precision)
        self.loss = member_losses(first.loss, first.train[1])
        self.metric = member_metrics(first.metric, first.val[1])
        # with measure.value_se, each member's per-example values too (`Trainer`'s standard error)
        per_example = per_example_metric(first) if options.measure_value_se else None
        self.per_example = None if per_example is None else torch.vmap(per_example, in_dims=(0, None))
        self.direct = direct_fits(self.model, self.loss, options.precision)  # updates without autograd
        self.accumulation = micro_batches(members[0].plan.batch_size, options.max_micro_batch)  # as `Step`'s
        self.orders = GroupOrders()
        self.eval_batch_size = options.eval_batch_size
        self.runs = [self.new_run(m) for m in members]
        for m in members:
            m.joined_with = len(members)
        self.size = len(members)  # the slots a refill keeps filled
        self.refill, self.on_leave, self.live = refill, on_leave, live
        plan = members[0].plan
        # a member joins where the others' epochs begin, unless every batch is full: the stacked
        # batches must have one length
        self.join_every = 1 if plan.drop_last or plan.n_train % plan.batch_size == 0 else plan.iterations_per_epoch
        self.clock = 0  # updates since the group's epochs began
        self.branching = bool(options.horizons)  # its members branch their horizons' decays

    @property
    def path(self) -> str:
        return self.model.path

    def train(self) -> list[TrainResult]:
        self.started = time.perf_counter()
        self.run_updates()
        return [run.result for run in self.runs]

    def run_updates(self) -> None:
        """The hot loop: each member's batch and LR, one fused step, count, check, evaluate."""
        x, y = self.train_data
        active = list(self.runs)  # slot i of every stacked tensor is active[i]
        loss_sum = torch.zeros(len(active), device=self.device)
        self.model.train()
        for run in active:
            run.started = self.started
        self.show(active)
        while True:
            free = self.refill is not None and len(active) < self.size
            if free and (not active or self.clock % self.join_every == 0):
                if not active:
                    self.clock = 0
                active, loss_sum = self.join(active, loss_sum)
                self.show(active)
            if not active:
                break
            if self.branching:  # after the update and its evaluation, as a run alone branches
                pruned = self.branch_due(active)
                if pruned:
                    active, loss_sum = self.leave(active, pruned, loss_sum)
                    self.show(active)
                    continue
            model, optimizer = self.model, self.optimizer  # a group emptied and refilled has new ones
            idx = self.orders.next([run.order for run in active])
            optimizer.lrs = [run.member.schedule.lr_at(run.result.updates) for run in active]
            xb, yb = gather(x, idx), gather(y, idx)
            if self.options.measure_noise and (measuring := [s for s, run in enumerate(active) if run.noise.due()]):
                losses = self.measured(model, xb, yb, active, measuring)
            else:
                losses = self.gradients(model, xb, yb, active)
            optimizer.step()
            optimizer.zero_grad()
            loss_sum += losses.detach()
            self.clock += 1
            size = idx.shape[1]
            # one sum tells whether every member's loss is finite; only when not, which are
            finite = None if math.isfinite(loss_sum.sum().item()) else torch.isfinite(loss_sum).tolist()
            leaving, due = [], []
            for slot, run in enumerate(active):
                result = run.result
                result.updates += 1
                result.examples_seen += size
                run.losses += 1
                if finite is not None and not finite[slot]:
                    result.stop_reason = "diverged"
                    leaving.append(slot)
                elif result.updates in run.points:
                    due.append(slot)
                elif result.updates == run.plan.planned_updates:
                    result.stop_reason = run.plan.stop_reason
                    leaving.append(slot)
            if self.live is not None:
                self.live.values[UPDATES] = active[0].result.updates  # one store: the shown member's count
            if due:
                leaving += self.evaluate_due(active, due, loss_sum)
                if self.live is not None and 0 in due and active[0].result.history:
                    self.live.evaluated(*active[0].result.history[-1])
            if leaving:
                active, loss_sum = self.leave(active, sorted(leaving), loss_sum)
                self.show(active)

    def branch_due(self, active: list[MemberRun]) -> list[int]:
        """Branch every horizon whose decay leaves its member's run at the member's count of
        updates, and report it; the slots of the members the pruner stops."""
        pruned: list[int] = []
        while True:
            due = [(slot, horizon) for slot, run in enumerate(active) if slot not in pruned
                   if (horizon := run.answers.due(run.result.updates)) is not None]
            if not due:
                return pruned
            slots = [slot for slot, _ in due]
            for slot, result in zip(slots, self.branch(active, slots, [h for _, h in due]), strict=True):
                if active[slot].answers.answer(result):
                    active[slot].result.stop_reason = "pruned"
                    pruned.append(slot)

    def branch(self, active: list[MemberRun], slots: list[int], horizons: list[Horizon]) -> list[HorizonResult]:
        """Train the horizons' decays of the members at `slots` as a group of their own, from
        copies of their state, and return what each answered; this group is left as it was."""
        started = time.perf_counter()
        twin = copy.copy(self)
        twin.model = self.model_of(slots)
        twin.optimizer = copy.copy(self.optimizer)
        twin.optimizer.keep(slots, twin.model.weights.param_list())
        twin.orders = GroupOrders()
        twin.runs = [self.branch_run(active[slot], horizon) for slot, horizon in zip(slots, horizons, strict=True)]
        twin.size, twin.refill, twin.on_leave, twin.live = len(slots), None, None, None
        twin.branching = False
        rng = GlobalRng.take(self.device)
        try:
            twin.train()
        finally:  # dropout draws as if no branch had run
            rng.restore(self.device)
        if twin.accumulation != self.accumulation:  # it halved its micro-batch: so does the group
            self.accumulation = twin.accumulation
            for run in active:
                self.record_accumulation(run)
        elapsed = time.perf_counter() - started
        answers = []
        for slot, horizon, branch in zip(slots, horizons, twin.runs, strict=True):
            run, done = active[slot].result, branch.result
            run.eval_seconds += done.eval_seconds  # a run alone counts its branches' evaluations too
            spent = elapsed - done.eval_seconds
            run.horizon_seconds += spent
            answers.append(HorizonResult(horizon.units, horizon.end_step, value=done.best_value,
                                         best_step=done.best_step, value_se=branch.best_se, updates=done.updates,
                                         examples=done.examples_seen, stop_reason=done.stop_reason,
                                         history=done.history, branch_updates=done.updates - run.updates,
                                         branch_examples=done.examples_seen - run.examples_seen,
                                         branch_seconds=spent))
        return answers

    def model_of(self, slots: list[int]) -> FusedModel:
        """The members at `slots` as a model of their own: copies of their slices (`keep` makes
        new tensors), the group's model left as it is."""
        weights = copy.copy(self.model.weights)
        weights.keep(slots)
        model = copy.copy(self.model)
        model.weights = weights
        return model

    def branch_run(self, run: MemberRun, horizon: Horizon) -> MemberRun:
        """The member's run of the horizon's length, at its branch point: the run's counts, the
        evaluations both share, its patience and a twin of its data order."""
        member = replace(run.member, plan=horizon.plan, schedule=horizon.schedule, reporter=None)
        branch = MemberRun(member, replace(self.budget, per_trial=horizon.units), self.options, self.device,
                           branch=True)
        shared = run.answers.shared(HorizonResult(horizon.units, horizon.end_step), run.result.updates)
        result = branch.result
        result.updates, result.examples_seen = run.result.updates, run.result.examples_seen
        result.history, result.best_value, result.best_step = shared.history, shared.value, shared.best_step
        branch.order, branch.patience = run.order.twin(), copy.copy(run.patience)
        branch.best_se = shared.value_se
        if run.noise is not None:  # it measures (and so splits its batches) where the dedicated run would
            branch.noise = run.noise.twin()
        return branch

    def join(self, active: list[MemberRun], loss_sum: Tensor) -> tuple[list[MemberRun], Tensor]:
        """Fill the free slots with new members from `refill`: their own weights and a fresh
        optimizer state appended to the stacked ones."""
        joining = []
        while len(active) + len(joining) < self.size:
            member = self.refill()
            if member is None:
                self.refill = None
                break
            joining.append(member)
        if not joining:
            return active, loss_sum
        if not active:  # the group was empty: it starts anew from these
            self.model = fuse_models([m.task.model for m in joining], self.model.path)
            self.optimizer = stacked_optimizer(self.model.weights.param_list(), [m.optimizer for m in joining])
            loss_sum = loss_sum.new_zeros(0)
        else:
            self.model.weights.add([m.task.model for m in joining])
            self.optimizer.add([m.optimizer for m in joining], self.model.weights.param_list())
        now = time.perf_counter()
        runs = [self.new_run(m) for m in joining]
        for run in runs:
            run.started = now
            run.member.joined_with = len(active) + len(runs)
        self.runs += runs
        self.members += joining
        return active + runs, torch.cat([loss_sum, loss_sum.new_zeros(len(runs))])

    def show(self, active: list[MemberRun]) -> None:
        """The live display's record: the group's first member (its trial, point, progress and last
        evaluation) and how many train with it. Written when the group changes, not per update."""
        if self.live is None or not active or active[0].member.trial is None:
            return
        run = active[0]
        member, plan = run.member, run.plan
        self.live.begin(member.trial, plan.batch_size, member.schedule.peak_lr, group=len(active),
                        seconds=time.perf_counter() - run.started)
        self.live.plan(member.schedule.peak_lr, plan.planned_updates, self.budget.planned(plan))
        self.live.values[UPDATES] = run.result.updates
        if run.result.history:
            self.live.evaluated(*run.result.history[-1])

    def gradients(self, model: FusedModel, x: Tensor, y: Tensor, active: list[MemberRun]) -> Tensor:
        """`member_gradients` of the group's batch. On running out of GPU memory the group halves
        its micro-batch as one (doubles its accumulation) and trains the same update again, as
        `Step.within_memory` does for a trial alone."""
        while True:
            try:
                return member_gradients(model, self.loss, x, y, self.direct, self.autocast, self.accumulation)
            except torch.cuda.OutOfMemoryError:
                self.optimizer.zero_grad()
                self.accumulation = halved(self.accumulation, x.shape[1], self.device,
                                           f" in a fused group of {len(active)}")
                for run in active:
                    self.record_accumulation(run)

    def measured(self, model: FusedModel, x: Tensor, y: Tensor, active: list[MemberRun],
                 measuring: list[int]) -> Tensor:
        """`gradients` on an update where the members at `measuring` measure their noise scale, as
        `hooks.NoiseScaleMeasure.measured_step` does alone: the batch in max(accumulation, 2)
        micro-batches, each one's gradient kept apart long enough for each member's norms of it
        (a group of one: a run alone's `_foreach_norm`), then the sum's."""
        n = x.shape[1]
        if n < 2:
            return self.gradients(model, x, y, active)
        parts = min(max(self.accumulation, 2), n)
        gradients = GradientParts(model.weights.param_list())
        norms: dict[int, list[list[Tensor]]] = {slot: [] for slot in measuring}

        def take_norms() -> None:
            grads = gradients.grads()
            if len(active) == 1:  # a run alone's one fused norm, the same bits
                norms[0].append(torch._foreach_norm(grads))
                return
            each = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # [tensors, K]
            for slot, taken in norms.items():
                taken.append(list(each[:, slot]))

        losses = torch.zeros(len(active), device=x.device)
        try:
            for i, (xp, yp) in enumerate(zip(x.tensor_split(parts, dim=1), y.tensor_split(parts, dim=1), strict=True)):
                if i:
                    gradients.set_aside()  # this micro-batch's gradient alone, then the sum again
                losses += gradients_of(model, self.loss, xp, yp, self.direct, self.autocast, xp.shape[1] / n).detach()
                take_norms()
                if i:
                    gradients.add_back()
        except torch.cuda.OutOfMemoryError:  # unmeasured, as `gradients` halves the micro-batch
            self.optimizer.zero_grad()
            return self.gradients(model, x, y, active)
        take_norms()
        for slot, taken in norms.items():
            active[slot].noise.add(taken, n)
        return losses

    def new_run(self, member: FusedMember) -> MemberRun:
        run = MemberRun(member, self.budget, self.options, self.device)
        if self.options.measure_noise:
            run.noise = NoiseScale(self.device, eval_window(member.plan, self.budget), self.accumulation > 1)
            run.result.noise_scale_curve = []
        if self.per_example is not None:
            run.result.value_se_curve = []
        self.record_accumulation(run)
        return run

    def record_accumulation(self, run: MemberRun) -> None:
        run.result.accumulation_steps = self.accumulation
        run.result.micro_batch = -(-run.plan.batch_size // self.accumulation)  # as `Trainer` records it

    def evaluate_due(self, active: list[MemberRun], due: list[int], loss_sum: Tensor) -> list[int]:
        """Evaluate the members at a grid point; the slots of those that stop."""
        stopping = []
        values = self.evaluate(active, due)
        for slot in due:
            run = active[slot]
            result = run.result
            result.last_train_loss = (loss_sum[slot] / max(run.losses, 1)).item()
            if not math.isfinite(result.last_train_loss):
                result.stop_reason = "diverged"
                stopping.append(slot)
                continue
            loss_sum[slot] = 0.0
            run.losses = 0
            value, se = values[slot]
            if run.report(run.points[result.updates], value, self.weights_of(slot), se):
                if result.updates == run.plan.planned_updates and result.stop_reason in ("pruned", "early_stopping"):
                    result.stop_reason = run.plan.stop_reason  # `Trainer`: over anyway, it ends on its plan
                stopping.append(slot)
            elif result.updates == run.plan.planned_updates:
                result.stop_reason = run.plan.stop_reason
                stopping.append(slot)
        return stopping

    def weights_of(self, slot: int) -> Callable[[], dict[str, Tensor]]:
        return lambda: self.model.weights.member(slot)

    def leave(self, active: list[MemberRun], leaving: list[int], loss_sum: Tensor) -> tuple[list[MemberRun], Tensor]:
        """The members at `leaving` end: a last evaluation for those whose plan ended off the grid,
        their best (else last) weights into their own models; the group goes on without them."""
        if self.live is not None:
            self.live.end()  # the display shows no trial until `show` (the members leaving are recorded now)
        finals = [slot for slot in leaving if active[slot].needs_final_evaluation()]
        if finals:
            values = self.evaluate(active, finals)
            for slot in finals:
                run = active[slot]
                reason = run.result.stop_reason
                value, se = values[slot]
                run.report(run.end_step(), value, self.weights_of(slot), se)
                if run.result.stop_reason in ("pruned", "early_stopping"):
                    run.result.stop_reason = reason  # the run was over anyway
        now = time.perf_counter()
        for slot in leaving:
            run = active[slot]
            result = run.result
            if run.answers is not None and run.answers.finish(result.updates, result.examples_seen,
                                                              result.stop_reason):
                result.stop_reason = "pruned"
            result.train_seconds = now - run.started - result.eval_seconds - (result.horizon_seconds or 0.0)
            if run.branch:
                continue  # a horizon's branch: the member's model is its run's, left alone
            run.member.task.model.load_state_dict(run.best_state or self.model.weights.member(slot))
            if self.on_leave is not None:
                self.on_leave(run.member, result)
        keep = [slot for slot in range(len(active)) if slot not in leaving]
        if keep:
            self.model.weights.keep(keep)
            self.optimizer.keep(keep, self.model.weights.param_list())
        return [active[slot] for slot in keep], loss_sum[keep]

    def evaluate(self, active: list[MemberRun], slots: list[int]) -> dict[int, tuple[float, float | None]]:
        """The metric over the shared validation set of the members at `slots` (those due), and its
        standard error when measured (as `Trainer.mean_and_se`), by slot, in chunks as `Trainer`
        takes them; the time is counted in each one's `eval_seconds`.
        Members whose grid is elsewhere (a refill joined later) are not evaluated: when only some
        are due, their slices are evaluated as a model of their own (`model_of`)."""
        started = time.perf_counter()
        x, y = self.val_data
        model = self.model if len(slots) == len(active) else self.model_of(slots)
        sums = torch.zeros(len(slots), device=x.device)
        moments = None if self.per_example is None else torch.zeros(2, len(slots), device=x.device)
        model.eval()
        with torch.no_grad(), self.autocast:
            for start in range(0, len(x), self.eval_batch_size):
                xb, yb = x[start : start + self.eval_batch_size], y[start : start + self.eval_batch_size]
                outputs = model.shared_outputs(xb)
                sums += self.metric(outputs, yb).float() * len(xb)
                if moments is not None:  # each member's per-example sum and sum of squares
                    each = self.per_example(outputs, yb).float()
                    moments[0] += each.sum(1)
                    moments[1] += (each * each).sum(1)
        model.train()
        values = (sums / len(x)).tolist()
        ses: list[float | None] = [None] * len(slots)
        if moments is not None:
            first, second = (moments / len(x)).tolist()
            ses = [math.sqrt(max(0.0, m2 - m1 * m1) / len(x)) for m1, m2 in zip(first, second, strict=True)]
        spent = time.perf_counter() - started
        for slot in slots:
            active[slot].result.eval_seconds += spent
        return dict(zip(slots, zip(values, ses, strict=True), strict=True))


def train_fused(members: Sequence[FusedMember], budget: Budget, options: TrainerOptions,
                path: str = "auto") -> list[TrainResult]:
    """Train the members as one fused group (NotFusable when they cannot be)."""
    return FusedTrainer(members, budget, options, path=path).train()
