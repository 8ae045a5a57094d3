"""The sweep loop with `objective.fuse` (issue 26, docs/guide/fused_training.md): a worker trains its trials in
fused groups of up to K, one group at a time.

- A group starts from one asked trial, which samples its batch size; K-1 more are asked with
  that batch size fixed and the rest sampled (`Books.ask(fixed=...)`: TPE's constant liar sees
  the group's open trials as running, so the K are not K copies of one point).
- Each member is built as the trial alone is (its seed, its model, its plan), reserves its own
  cost in the total budget's ledger, reports to the pruner under its own trial, and is recorded
  and told the moment it leaves the group, as a trial trained alone is.
- A member that leaves (its budget done, pruned, early-stopped, diverged) is replaced by a new
  trial while the study wants trials and the sampler proposes the group's batch size
  (`FusedTrainer`'s refill; the refill is sampled freely, so one group does not fix the batch
  size of the whole sweep). A trial of another batch size, sampled so or a queued retry that
  keeps its own, starts the next group once this one has drained.
- `auto`: K measured for each batch size the first time it comes (`fused_group.measure_size`).

What the study cannot fuse is decided before it opens (`fused_loop_for`): under `auto` the sweep
runs one trial at a time with one line saying why, under an explicit K it is a usage error.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from objectives.registry import TaskFactory
from objectives.training.budget import Budget
from objectives.training.fused import FusedTrainer
from objectives.training.fused.refusal import refusal
from objectives.training.loop import TrainResult
from sweeps.config.study_file import SweepConfig
from sweeps.errors import ConfigError, interruption_behind
from sweeps.loop.sweep_loop import (
    Asked,
    SweepLoop,
    asked_from,
    log_failure,
    nothing_asked,
    raise_errors_of_done,
    settled,
)
from sweeps.trial import fused_group
from sweeps.trial.fused_group import Member
from sweeps.trial.run_one import Outcome, resolve_device, trainer_options

logger = logging.getLogger("sweeps")
FIXED_BATCH_TRIES = 3  # asks for a member that come back with another batch size before the group stops asking


def fused_loop_for(config: SweepConfig, factory: TaskFactory, budget: Budget) -> type[SweepLoop]:
    """The loop class a worker runs: `FusedSweepLoop` when `objective.fuse` is on and the study
    can fuse, else `SweepLoop` (with one line under `auto`); ConfigError (exit 2) when an
    explicit K cannot be honoured. A worker of --gpus fuses its own groups on its own GPU."""
    fuse = config.objective.fuse
    if fuse == "off":
        return SweepLoop
    options = trainer_options(config, config.objective.max_micro_batch)
    reason = fused_group.settings_refusal(config, budget, options)
    if reason is None:
        if fuse == "auto" and fused_group.auto_cap(config.study.n_trials) == 1:
            return SweepLoop  # too few trials for groups (a tenth of them): one at a time, without building the task
        reason = fused_group.task_refusal(config, factory, budget, options, resolve_device(config.objective.device))
    if reason is None:
        return FusedSweepLoop
    if fuse == "auto":
        print(f"objective.fuse auto: trials train one at a time: {reason}", flush=True)
        return SweepLoop
    raise ConfigError("objective.fuse", f"{fuse} cannot fuse this study: {reason}; set objective.fuse: auto or off")


class FusedSweepLoop(SweepLoop):
    """`SweepLoop` for fused groups: the same bookkeeper, asks, reservations, pruning and records."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fuse = self.config.objective.fuse
        self.sizes: dict[int, int] = {}  # auto: batch size -> K measured
        self.held: list[Asked] = []  # asked for a group of another batch size: each starts a group
        self.training: dict[int, Member] = {}  # trial id -> member of the running group
        self.pending = []
        self.options = self.objective.options

    def run(self) -> None:
        self.start()
        try:
            while not self.gave_up:
                first = self.next_first()
                if first is None:
                    break
                self.run_group(first)
                self.pending = raise_errors_of_done(self.pending)
            if self.gave_up:
                for asked in self.held:
                    self.book.close_unfinished(asked.trial.trial_id, f"not started: {self.failures_in_a_row} "
                                                                     "trials in a row failed", False).result()
                self.held = []
            elif self.has_end:
                self.book.end().result()
        except BaseException as err:
            self.abort_group(err)
            raise
        finally:
            self.book.shutdown()
        raise_errors_of_done(self.pending)

    def next_first(self) -> Asked | None:
        """The trial that starts the next group: one held, else one asked; its cost reserved.
        When the total budget refuses it, the trials still held are closed unstarted too."""
        if self.held:
            first = self.held.pop(0)
        else:
            first = asked_from(self.book.ask())
            if first is None:  # counted with this process's trials still open: count again once told
                first = asked_from(self.book.ask(wait_for_others=True))
        if first is None:
            return None
        if not self.reserved(first):  # closed unstarted by the bookkeeper: the budget is spent
            for asked in self.held:
                self.book.close_unfinished(asked.trial.trial_id, "not started: the total budget is spent",
                                           False).result()
            self.held = []
            return None
        return first

    def reserved(self, asked: Asked, tentative: bool = False) -> bool | None:
        """study.total_budget: book the trial before it trains (False: closed by the bookkeeper).
        `tentative`: None, the trial left open, when it does not fit now (a group's later member)."""
        return self.books.spending is None or self.book.reserve(asked.trial.trial_id, asked.point,
                                                                tentative).result()

    def member_of(self, asked: Asked) -> Member | None:
        """Build the asked trial's member; one that cannot be built is recorded failed (None)."""
        built = fused_group.build_member(self.objective, asked.trial, asked.point, self.pruner_for(asked))
        if isinstance(built, Outcome):
            self.record(asked, built)
            return None
        built.trial = asked.trial
        built.asked = asked
        self.pending.append(self.book.started(asked.trial.trial_id))
        return built

    def group_size(self, member: Member) -> int:
        if self.fuse != "auto":
            return self.fuse
        batch = member.prepared.plan.batch_size
        if batch not in self.sizes:
            cap = fused_group.auto_cap(self.books.n_trials)
            k, rates = fused_group.measure_size(member, self.options, tuple(s for s in fused_group.AUTO_SIZES
                                                                           if s <= cap))
            self.sizes[batch] = k
            print(fused_group.size_line(batch, k, rates, cap), flush=True)
        return self.sizes[batch]

    def next_member(self, first: Member, refill: bool = False) -> Member | None:
        """A new trial for the group, its cost reserved. Forming the group: its batch size fixed,
        the rest sampled. A refill: sampled freely, so the sampler keeps choosing batch sizes; one
        of another batch size is held to start the next group, and this group refills no more
        (it drains, then the next one forms)."""
        batch = first.prepared.plan.batch_size
        fixed = None if refill else fused_group.batch_params(self.config.search, batch)
        for _ in range(FIXED_BATCH_TRIES):
            if self.gave_up:
                return None
            asked = asked_from(self.book.ask(fixed=fixed))
            if asked is None:
                return None
            if asked.point.batch_size != batch:  # sampled so, or a queued retry of another batch size
                self.held.append(asked)  # its cost is reserved when its group starts
                if refill:
                    return None
                continue
            # Tentative: a member that does not fit waits for no one. This worker's group holds its
            # reserved members unstarted while it forms, so waiting here for the others' trials to settle
            # could wait on a worker waiting the same way (two workers deadlocked on a nearly spent total).
            granted = self.reserved(asked, tentative=True)
            if granted is None:
                self.held.append(asked)  # the next group's first, booked (and waiting if need be) then
                return None
            if not granted:
                return None
            member = self.member_of(asked)
            if member is None:
                continue
            reason = refusal([first.fused, member.fused], self.options, self.objective.budget)
            if reason is not None:
                self.refused(asked, member, reason)
                continue
            return member
        return None

    def refused(self, asked: Asked, member: Member, reason: str) -> None:
        """A trial that does not fuse with its group (its data or model follows its parameters):
        trained alone under auto; a usage error under an explicit K."""
        if self.fuse != "auto":
            self.training[asked.trial.trial_id] = member  # closed and queued again by the abort
            raise ConfigError("objective.fuse", f"{self.fuse} cannot fuse trial {asked.trial.number}: {reason}; "
                                                "set objective.fuse: auto or off")
        print(f"objective.fuse auto: trial {asked.trial.number} trains alone: {reason}", flush=True)
        outcome = self.objective.run(asked.trial, asked.point, self.pruner_for(asked))
        self.record(asked, outcome)

    def run_group(self, first_asked: Asked) -> None:
        first = self.member_of(first_asked)
        if first is None:
            return
        self.training[first_asked.trial.trial_id] = first
        group = f"{self.objective.identity.get('sampler_seed', 0)}-{first_asked.trial.number}"
        members = [first]
        k = self.group_size(first)
        while len(members) < k:
            member = self.next_member(first)
            if member is None:
                break
            members.append(member)
            self.training[member.asked.trial.trial_id] = member
        by_fused = {id(m.fused): m for m in members}

        def refill():
            member = self.next_member(first, refill=True)
            if member is None:
                return None
            self.training[member.asked.trial.trial_id] = member
            by_fused[id(member.fused)] = member
            return member.fused

        def on_leave(fused, result: TrainResult) -> None:
            member = by_fused[id(fused)]
            outcome = fused_group.finish_member(self.objective, member, result, group, fused.joined_with)
            self.record(member.asked, outcome)
            # open until its record is queued: a signal before that closes it and queues it again
            del by_fused[id(fused)], self.training[member.asked.trial.trial_id]

        try:
            trainer = FusedTrainer([m.fused for m in members], self.objective.budget, self.options,
                                   refill=refill, on_leave=on_leave, live=self.objective.live)
            trainer.train()
        except ConfigError:
            raise
        except Exception as err:  # as `SweepObjective.run`: the trials fail, the sweep goes on
            if (interruption := interruption_behind(err)) is not None:
                raise interruption from None  # the sweep stops, as on the signal itself
            if isinstance(err, torch.cuda.OutOfMemoryError):
                err = RuntimeError(f"out of memory in a fused group of {k} (outside its update, which halves its "
                                   "micro-batch): set objective.fuse lower, or off")
            for member in list(by_fused.values()):
                del self.training[member.asked.trial.trial_id]
                self.record(member.asked, fused_group.fail_member(member, err, group, member.fused.joined_with or k))
        finally:
            if self.objective.live is not None:
                self.objective.live.end()
            self.objective.release_memory()

    def record(self, asked: Asked, outcome: Outcome) -> None:
        """Tell the bookkeeper how the trial ended, as `SweepLoop.run` does for a trial alone."""
        log_failure(asked.trial, outcome)
        self.count(outcome)
        settled(asked.decisions)
        self.pending.append(self.book.finish(asked.trial.trial_id, dataclasses.replace(outcome, error=None),
                                             self.failures_in_a_row))

    def abort_group(self, err: BaseException) -> None:
        """Close every trial this worker holds open (the group's members and those held), queued
        again as `SweepLoop.abort` queues a trial cut short."""
        members = list(self.training.values())
        self.training = {}
        held, self.held = self.held, []
        current = members[0].asked if members else (held.pop(0) if held else None)
        for member in members[1:]:
            held.insert(0, member.asked)
        # SweepLoop.abort closes `current` and the trial asked ahead; the rest go the same way
        self.abort(current, nothing_asked(), err)
        reason = f"interrupted: {type(err).__name__}"
        for asked in held:
            try:
                settled(asked.decisions)
                self.book.close_unfinished(asked.trial.trial_id, reason).result()
            except Exception:
                logger.exception("could not close the open trials")
