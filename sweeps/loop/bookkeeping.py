"""The bookkeeper's side of a sweep: everything Optuna does for it, in the bookkeeping process.

Asking the sampler for a trial, taking pruning decisions, recording finished trials, failing
stale ones. `sweeps.loop.bookkeeper_process` runs these methods in a forked child (or a thread), in
order, while the training process (`sweeps.loop.sweep_loop`) trains; `sweeps.loop.interface`
is what the two say to each other.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from storage.batch import count_running, count_trials, mark_running_trial, write_trial_batch
from storage.heartbeats import (
    fail_and_queue_again,
    fail_stale_trials,
    grace_period_of,
    heartbeat_ages,
    retry_made_by,
)
from storage.optuna_private import (
    asked_system_attrs,
    engine_of,
    enter_optimize_loop,
    stop_requested,
    study_id_of,
    study_storage,
    tell,
    trial_id_of,
)
from storage.retry import with_retry
from storage.snapshot import snapshot
from sweeps.budget.admission import BudgetBooks
from sweeps.budget.ledger_view import ledger_study_id, no_ledger, refused_message
from sweeps.budget.spending import Spending
from sweeps.config.study_file import SweepConfig
from sweeps.confirmation.companion import why_not_run
from sweeps.loop.heartbeat import Heartbeat, seconds_to_stale, stale_wait_text
from sweeps.loop.interface import TrialRef
from sweeps.loop.progress import Progress
from sweeps.loop.slots import others_wanting_a_slot
from sweeps.search.space import Suggestion, suggest
from sweeps.search.strategies import grid_size
from sweeps.trial.fused_group import fix_params
from sweeps.trial.record import (
    CONFIRMS_STUDY_ATTR,
    STARTED_KEY,
    TrialRecord,
    error_attrs,
    queued_attrs,
    value_se_key,
)
from sweeps.trial.run_one import Outcome

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

Callback = Callable[[optuna.Study, FrozenTrial], None]
logger = logging.getLogger("sweeps")


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class Books:
    """The study's bookkeeping for one worker process (implements `interface.Bookkeeping`)."""

    def __init__(self, study: optuna.Study, config: SweepConfig, n_trials: int, keeper=None,
                 callbacks: list[Callback] | None = None, at_end: Callable[[optuna.Study], None] | None = None,
                 spending: Spending | None = None, display: Progress | None = None,
                 identity: dict[str, object] | None = None):
        """`identity`: the worker's attributes (number, sampler seed), recorded on the trials it
        closes unfinished too, so a stopped worker's failed trials say whose they were."""
        self.study = study
        self.identity = dict(identity or {})
        self.storage = study_storage(study)  # Optuna's cached storage, which the study itself uses
        self.study_id = study_id_of(study)
        self.config = config
        self.n_trials = n_trials
        self.keeper = keeper  # sweeps.trial.checkpoints.CheckpointKeeper: writes the best trials' weights
        self.callbacks = callbacks or []
        self.at_end = at_end  # after the last trial is recorded, where the trials are cached
        self.failures_seen = 0  # as of the last trial recorded
        self.sampler_stopped = False
        self.grid_size = grid_size(config) if config.sampler.name == "grid" else None
        self.heartbeat = Heartbeat(study)
        self.next_stale_check = 0.0
        self.stopping = threading.Event()  # set on abort: a waiting ask gives up
        self.open: dict[int, optuna.Trial] = {}  # trials asked and not yet closed
        self.training: set[int] = set()  # those of them the training process has started
        # study.total_budget: its ledger in the store (None: no total budget; a store without SQL refuses one)
        # a companion study of confirmation runs trains only what `sweeps confirm` queued in it,
        # and books its runs in its main study's ledger
        self.queued_only = CONFIRMS_STUDY_ATTR in study.user_attrs
        if spending is not None and engine_of(self.storage) is None:
            raise no_ledger(study.study_name)  # never a sweep that ignores its total
        self.spending = spending
        self.budget = None if self.spending is None else BudgetBooks(
            self.storage, ledger_study_id(study), self.spending, self.pause if self.heartbeat.enabled else None,
            marks_spent=not self.queued_only)
        self.display = display  # the live progress display, drawn from this process
        self.waiting_logged = False

    def start_bookkeeping(self, in_child: bool) -> None:
        engine = engine_of(self.storage)
        if in_child and engine is not None:
            # the parent's pooled connections are the parent's: open one of its own now, so the
            # first ask does not wait for it
            engine.dispose(close=False)
            with_retry(lambda: engine.connect().close(), "connecting to the store")
        self.heartbeat.start()
        if self.budget is not None:
            finished = with_retry(lambda: self.study.get_trials(deepcopy=False, states=FINISHED), "reading trials")
            self.budget.learn_pace(finished)
        if self.display is not None:
            self.display.start()
        self.requeue_stale_trials()  # before the first ask, while the worker starts

    def requeue_stale_trials(self) -> None:
        """Fail (and queue again) trials whose worker died; once per heartbeat interval is enough."""
        if self.heartbeat.enabled and time.monotonic() >= self.next_stale_check:
            with_retry(self.fail_stale_trials, "failing stale trials")
            self.next_stale_check = time.monotonic() + self.heartbeat.interval

    def stop_bookkeeping(self) -> None:
        self.heartbeat.stop()
        if self.display is not None:
            self.display.stop()

    def interrupt(self) -> None:
        self.stopping.set()

    def in_optimize_loop(self) -> None:
        # Samplers end a study with study.stop() (the grid sampler, when its grid is used up, from
        # ask or tell), which Optuna allows only inside its own optimize loop, a thread-local flag:
        # the bookkeeper's thread plays that part.
        enter_optimize_loop(self.study)

    def ask(self, wait_for_others: bool = False, fixed: dict | None = None) -> tuple[TrialRef, Suggestion] | None:
        """The next trial, or None when the study has its trials.

        Running trials of every worker count, so N workers asking ahead do not overshoot; once the
        free slots are no more than the other workers that will want one (`others_wanting_a_slot`), a
        trial is asked only when this process is free to run it (not ahead), so the last trials go
        to whichever worker is idle first (a lone worker asks ahead to the last trial). With
        `wait_for_others` (this process has no open trial) and a heartbeat, a worker whose slots
        are all held by other workers' running trials waits until those finish, or go stale and
        are queued again, instead of leaving a dead worker's trial unfinished. `fixed`: parameters
        the new trial takes as given, the sampler drawing the rest (a fused group's batch size,
        sweeps/trial/fused_group.py); a queued trial (a retry) keeps its own.
        """
        self.in_optimize_loop()
        while True:
            if (self.failures_seen >= self.config.study.max_failures or self.sampler_stopped
                    or stop_requested(self.study) or self.stopping.is_set()
                    or (self.budget is not None and self.budget.spent(self.open, wait_for_others))):
                return None
            self.requeue_stale_trials()
            taken = self.taken()
            free = self.n_trials - taken
            if self.queued_only:  # a slot with nothing queued for it is no slot; wait only while a retry may come
                free = min(free, self.waiting())
                if free <= 0 and not self.running():
                    return None
            if free > 0 and (wait_for_others or free > taken or free > self.others_wanting_a_slot()):
                break
            if free > 0:  # asking ahead for one of the last slots would hold it while another worker idles
                return None
            if not (wait_for_others and self.heartbeat.enabled) or self.finished() >= self.n_trials:
                return None
            self.say_waiting()
            self.stopping.wait(min(0.5, self.heartbeat.interval))
        self.say_waiting(done=True)
        with snapshot(self.storage):  # the study's trials read once for the whole ask
            if self.grid_size is not None and len(self.study.get_trials(deepcopy=False)) >= self.grid_size:
                return None  # every grid point is taken; asking again would repeat one
            trial = with_retry(self.study.ask, "asking for a trial")
            if fixed:
                fix_params(trial, fixed)
            self.heartbeat.add(trial_id_of(trial))
            # workers raced for the last slots (numbers are 0, 1, ...: at most `number` trials are numbered
            # below it, so only a trial numbered n_trials or more can be past them, and only it is counted).
            # A queued trial numbered below it holds a slot too: a retry queued after this ask looked at
            # the queue and before it made its trial is popped by another worker, and passes this check
            if trial.number >= self.n_trials and self.taken(below=trial.number, queued=True) >= self.n_trials:
                self.close_unfinished_quietly(trial)
                return None
            point = with_retry(lambda: suggest(trial, self.config.search), "sampling a trial")
        fixed_seed = None
        if self.queued_only:
            reason = why_not_run(trial.number, trial.user_attrs, self.study.get_trials(deepcopy=False))
            if reason is not None:  # the sampler's own point, or a confirmation run another trial took
                self.close_unfinished_quietly(trial, reason)
                return self.ask(wait_for_others, fixed)
            fixed_seed = TrialRecord.from_attrs(trial.user_attrs).confirm_seed
        self.open[trial_id_of(trial)] = trial
        retry_of = asked_system_attrs(trial).get("failed_trial")  # as the ask read it: no read again
        return TrialRef(trial.number, trial_id_of(trial), dict(trial.params), retry_of, fixed_seed), point

    def others_wanting_a_slot(self) -> int:
        """`sweeps.loop.slots.others_wanting_a_slot`, from the study's running trials and their start
        marks (`started`) in one query."""
        running, training = with_retry(lambda: count_running(self.storage, self.study_id, STARTED_KEY),
                                       "counting trials")
        self.training &= self.open.keys()
        return others_wanting_a_slot(running, training, len(self.open), len(self.training))

    def started(self, trial_id: int) -> None:
        """The training process began training the trial: marked in the store (`STARTED_KEY`), so the
        other workers' asks count it as a trial in training, not one asked ahead."""
        self.training.add(trial_id)
        with_retry(lambda: mark_running_trial(self.storage, trial_id, STARTED_KEY),
                   "marking a trial started")

    def pause(self, seconds: float) -> bool:
        """Wait (failing stale trials meanwhile) unless the sweep is stopping; False when it is."""
        self.requeue_stale_trials()
        return not self.stopping.wait(seconds)

    def reserve(self, trial_id: int, point: Suggestion, tentative: bool = False) -> bool | None:
        """Book the trial's planned cost in the total budget's ledger before it trains. A trial
        that would overrun what is left is closed unstarted (not queued again); one interrupted
        while it waits for budget stays open, for the training process to close and queue again.
        `tentative`: booked ahead of this worker's last trial's settlement, which may give some
        back; a trial that does not fit yet is left open (None) for the caller to ask again after it."""
        granted, left, cost = self.budget.reserve(trial_id, point, self.open, tentative)
        if granted is None:
            return None
        if granted or self.stopping.is_set():
            return granted
        self.close_unfinished_quietly(self.open.pop(trial_id), refused_message(left, cost, self.spending.total.unit))
        return False

    def say_waiting(self, done: bool = False) -> None:
        """Tell the user why nothing trains: the slots left are held by other workers' trials."""
        text = None
        if done:
            self.waiting_logged = False
        else:
            ages = with_retry(lambda: heartbeat_ages(self.storage, self.study_id), "reading heartbeats")
            others = [age for trial_id, age in ages.items() if trial_id not in self.open]
            grace = grace_period_of(self.storage)
            text = stale_wait_text(others, self.heartbeat.interval, grace)
            left = seconds_to_stale(others, self.heartbeat.interval, grace)
            if left is not None:  # fail it the moment it goes stale, not at the next check an interval on
                self.next_stale_check = min(self.next_stale_check, time.monotonic() + left)
            if not self.waiting_logged:
                logger.info(text)
                self.waiting_logged = True
        if self.display is not None and (text is not None or self.display.waiting is not None):
            self.display.set_waiting(text)

    def running(self) -> int:
        return with_retry(lambda: count_trials(self.storage, self.study_id, (TrialState.RUNNING,)),
                          "counting trials")

    def waiting(self) -> int:
        return with_retry(lambda: count_trials(self.storage, self.study_id, (TrialState.WAITING,)),
                          "counting trials")

    def finished(self) -> int:
        return with_retry(lambda: count_trials(self.storage, self.study_id, FINISHED),
                          "counting trials")

    def taken(self, below: int | None = None, queued: bool = False) -> int:
        """The study's finished and running trials (`queued`: and those waiting in its queue),
        numbered below `below` when given."""
        states = (*FINISHED, TrialState.RUNNING) + ((TrialState.WAITING,) if queued else ())
        return with_retry(lambda: count_trials(self.storage, self.study_id, states, below),
                          "counting trials")

    def close_unfinished_quietly(self, trial: optuna.Trial,
                                 reason: str = "not started: the study already had its trials",
                                 requeue: bool = False) -> None:
        """Fail a trial this process will not finish, with the reason and this worker's identity (a
        trial asked after the last slot went to another worker, one the total budget refused, or,
        through `close_unfinished`, one interrupted), and with `requeue` queue its configuration to
        run again. The failure and the retry are one transaction (`fail_and_queue_again`, as for a dead
        worker's trial): failed first and queued after, another worker could find the slot free with
        nothing queued for it in between, make a new trial there and leave the retry unrun when the
        study ends. Nothing more happens to a trial another worker failed as stale meanwhile (this one
        cut off from the store for longer than the grace period): closed, and queued again, there."""
        trial_id = trial_id_of(trial)
        try:
            write_trial_batch(self.storage, trial_id, {**self.identity, **error_attrs(reason)}, {})
            if requeue:
                fail_and_queue_again(self.storage, self.study_id, trial_id, self.retry_of(trial_id))
            else:
                tell(self.study, trial, state=TrialState.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        finally:  # not kept beating when the close fails: it goes stale and another worker queues it
            self.heartbeat.discard(trial_id)

    def retry_of(self, trial_id: int) -> FrozenTrial | None:
        """The trial `study.max_retry`'s retry queue adds for this one (None past its retries): the
        configuration and what it was queued with, not the error this worker recorded."""
        frozen = copy.copy(self.storage.get_trial(trial_id))
        frozen.user_attrs = queued_attrs(frozen.user_attrs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = RetryHeartbeatStaleTrialCallback(max_retry=self.config.study.max_retry)
        return retry_made_by(callback, frozen)

    def fail_stale_trials(self) -> None:
        fail_stale_trials(self.study)  # each failure and its retry in one transaction: safe to run again

    def decide(self, trial_id: int, value: float, step: int, value_se: float | None = None) -> bool:
        trial = self.open[trial_id]

        def report_and_ask() -> bool:
            if value_se is not None:  # before the report, for the pruner's noise guard to read
                self.storage.set_trial_system_attr(trial_id, value_se_key(step), value_se)
            trial.report(value, step)
            return trial.should_prune()

        try:
            return with_retry(report_and_ask, "a pruning decision")
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale by another worker meanwhile:
            return True  # stop training it; `finish` then says so (`closed_elsewhere`)

    def finish(self, trial_id: int, outcome: Outcome, failures_in_a_row: int) -> None:
        self.in_optimize_loop()
        trial = self.open.pop(trial_id)
        if outcome.checkpoint is not None and self.keeper is not None:
            self.keeper.write(outcome.checkpoint)
        try:
            with_retry(lambda: write_trial_batch(self.storage, trial_id_of(trial), outcome.attrs, outcome.curve),
                       "recording a trial")
        except optuna.exceptions.UpdateFinishedTrialError:
            self.closed_elsewhere(trial, outcome)
            self.failures_seen = failures_in_a_row
            return
        if self.budget is not None:
            self.budget.settle(trial_id_of(trial), outcome.attrs)
        value = outcome.value if outcome.state == TrialState.COMPLETE else None
        with_retry(lambda: tell(self.study, trial, value, state=outcome.state, skip_if_finished=True),
                   "closing a trial")
        self.heartbeat.discard(trial_id_of(trial))
        self.failures_seen = failures_in_a_row  # so an ask after this sees a give-up
        if stop_requested(self.study):
            self.sampler_stopped = True
        if self.callbacks:  # the progress line, the trial log, notes: each reads the store again
            frozen = with_retry(lambda: self.storage.get_trial(trial_id_of(trial)), "reading a trial back")
            for callback in self.callbacks:
                with_retry(functools.partial(callback, self.study, frozen), "showing a finished trial")

    def closed_elsewhere(self, trial: optuna.Trial, outcome: Outcome) -> None:
        """The trial was failed as stale by another worker while this one could not reach the store
        for longer than the grace period (a database restart, a network cut): whoever failed it queued
        its retry, which trains the configuration again. What it cost is settled in the ledger; the
        sweep goes on."""
        if self.budget is not None:
            self.budget.settle(trial_id_of(trial), outcome.attrs)
        self.heartbeat.discard(trial_id_of(trial))
        logger.warning("trial %d was failed as stale by another worker while this one could not reach the store "
                       "for longer than study.grace_period: its result is not recorded, its retry trains it again; "
                       "raise study.grace_period above the store's longest outage", trial.number)

    def end(self) -> None:
        if self.at_end is not None:
            self.at_end(self.study)

    def close_unfinished(self, trial_id: int, reason: str, requeue: bool = True) -> None:
        """`close_unfinished_quietly` for a trial this process holds open, queued again (`requeue`)
        when `study.max_retry` allows. A trial whose record this worker queued before the close (a
        signal landed between the two) is left as recorded."""
        trial = self.open.pop(trial_id, None)
        if trial is not None:
            self.close_unfinished_quietly(trial, reason, requeue and self.config.study.max_retry > 0)
