"""Asking ahead for the last slots: a worker asks its next trial while its current one trains,
unless that would hold a slot another worker will want first (`Books.ask`).

Two workers' bookkeeping (`Books`) share one real SQLite study; `started` marks a trial the
worker trains, so the other worker's ask counts it as in training, not asked ahead.
"""

from __future__ import annotations

import warnings

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

import sweeps.loop.bookkeeping
from storage import open_storage
from storage.batch import count_running
from storage.heartbeats import fail_stale_trials
from storage.optuna_private import engine_of, study_storage
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.loop.bookkeeping import Books
from sweeps.loop.runner import open_study
from sweeps.loop.slots import others_wanting_a_slot
from sweeps.trial.record import STARTED_KEY
from sweeps.trial.run_one import Outcome
from tests.conftest import TINY, merged


def two_workers(tmp_path, n_trials: int) -> tuple[Books, Books]:
    config = parse_config(merged(TINY, {"study": {"n_trials": n_trials}}), tmp_path)
    return tuple(Books(open_study(config, target_of(config), n_train=256), config, n_trials) for _ in range(2))


def start(books: Books) -> int:
    """Ask a trial and start training it, as the sweep loop does."""
    ref, _ = books.ask()
    books.started(ref.trial_id)
    return ref.trial_id


def test_every_worker_asks_ahead_while_each_has_a_slot_left(tmp_path):
    a, b = two_workers(tmp_path, n_trials=4)
    start(a), start(b)
    assert a.ask() is not None  # 2 free: one for a, one for b's next
    # 1 free and b is the only worker wanting one: a's trial asked ahead is not a worker waiting
    # (counted as one, b would idle between its trials while a slot is free)
    assert b.ask() is not None
    assert a.taken() == 4


def test_the_last_slot_is_not_asked_ahead_while_another_worker_will_want_it(tmp_path):
    a, b = two_workers(tmp_path, n_trials=3)
    start(a), start(b)
    assert a.ask() is None, "the last slot goes to whichever worker is free first"
    assert b.ask() is None
    ref, _ = a.ask(wait_for_others=True)  # a is free: it takes it
    assert ref.trial_id not in a.training


def test_a_lone_worker_asks_ahead_to_the_last_trial(tmp_path):
    (a, _) = two_workers(tmp_path, n_trials=2)
    start(a)
    assert a.ask() is not None


def test_started_marks_a_running_trial_with_its_own_id_and_a_finished_one_never(tmp_path):
    (a, _) = two_workers(tmp_path, n_trials=3)
    storage = study_storage(a.study)
    running, finished = start(a), a.ask()[0].trial_id
    a.study.tell(a.open.pop(finished), 1.0)
    a.started(finished)
    assert storage.get_trial(running).system_attrs[STARTED_KEY] == running
    assert STARTED_KEY not in storage.get_trial(finished).system_attrs
    assert count_running(storage, a.study_id, STARTED_KEY) == (1, 1)


def test_a_retry_counts_as_started_once_it_starts_not_by_the_mark_it_copied(tmp_path):
    """A retry carries the system attributes of the trial it retries (Optuna's stale-trial
    callback copies them), the start mark included: a mark names its own trial, so the copy does not
    count until the retry's worker starts it."""
    a, b = two_workers(tmp_path, n_trials=4)
    storage = study_storage(a.study)
    dead = start(a)
    a.study.tell(a.open.pop(dead), state=TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback()(a.study, storage.get_trial(dead))
    retry, _ = b.ask()
    assert retry.retry_of is not None and storage.get_trial(retry.trial_id).system_attrs[STARTED_KEY] == dead
    assert count_running(storage, b.study_id, STARTED_KEY) == (1, 0), "asked, not started"
    b.started(retry.trial_id)
    assert count_running(storage, b.study_id, STARTED_KEY) == (1, 1)


def test_at_64_workers_with_64_slots_left_every_worker_asks_ahead_in_turn():
    """The benchmark's case (docs/many_workers.md): all 64 train, and the k-th to ask sees k - 1
    trials asked ahead by the others. Counting those as workers wanting a slot (the old count,
    running less this worker's open trials) let only the first ask ahead."""
    for k in range(1, 65):
        free, running = 64 - (k - 1), 64 + (k - 1)
        assert free > others_wanting_a_slot(running, training=64, open_here=1, training_here=1)
        assert (free > running - 1) == (k == 1)


def test_a_retry_queued_while_another_worker_asks_keeps_the_study_at_its_count(tmp_path):
    """The race a fresh-clone CI run lost (8 workers through PgBouncer, one killed: 21 trials
    finished of 20). A dead worker's trial is failed and its retry queued between another worker's
    look at the retry queue (empty) and its new trial: the retry has the lower number. Counting only
    running and finished trials below the new one, both the new trial and the retry trained."""
    a, b = two_workers(tmp_path, n_trials=2)
    storage = study_storage(a.study)
    start(a)
    dead = b.ask(wait_for_others=True)[0].trial_id  # the last slot, b being free
    b.study.tell(b.open.pop(dead), state=TrialState.FAIL)  # its worker died: failed as stale

    def queue_the_retry_after_the_look(look=b.study._pop_waiting_trial_id):
        found = look()  # the queue as b read it: empty
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback()(a.study, storage.get_trial(dead))  # another worker, meanwhile
        return found

    b.study._pop_waiting_trial_id = queue_the_retry_after_the_look
    assert b.ask(wait_for_others=True) is None, "the slot is the retry's: b's new trial is closed unrun"
    del b.study._pop_waiting_trial_id
    retry, _ = a.ask(wait_for_others=True)
    assert retry.retry_of is not None
    states = [t.state for t in a.study.get_trials()]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL]


def test_an_interrupted_trial_is_failed_and_queued_again_with_no_free_slot_between(tmp_path):
    """A worker stopped mid-trial fails it and queues it again. At every statement it runs meanwhile,
    another worker's look at the study never finds the trial failed and no retry queued: a slot free
    with nothing queued for it, where that worker would make a new trial and leave the retry unrun
    at the end of the study."""
    a, b = two_workers(tmp_path, n_trials=3)
    start(b)
    interrupted = start(a)
    other = open_storage(str(engine_of(study_storage(a.study)).url))  # a connection of another process's
    seen = []

    def look(conn, cursor, statement, parameters, context, executemany):
        seen.append(sorted(t.state.name for t in other.get_all_trials(a.study_id, deepcopy=False)))

    sqlalchemy.event.listen(engine_of(study_storage(a.study)), "before_cursor_execute", look)
    a.close_unfinished(interrupted, "interrupted")
    sqlalchemy.event.remove(engine_of(study_storage(a.study)), "before_cursor_execute", look)
    assert seen and not [states for states in seen if "FAIL" in states and "WAITING" not in states], seen
    assert sorted(t.state.name for t in a.study.get_trials()) == ["FAIL", "RUNNING", "WAITING"]
    failed = a.study.get_trials()[1]
    assert failed.user_attrs["error"] == "interrupted"
    retry, _ = b.ask(wait_for_others=True)
    assert retry.retry_of == failed.number


def test_an_interrupted_trial_failed_as_stale_meanwhile_is_queued_once(tmp_path, monkeypatch):
    """Another worker (this one cut off from the store for longer than the grace period) fails the
    trial as stale and queues it again while the stopped worker closes it: one retry, not two."""
    a, _ = two_workers(tmp_path, n_trials=2)
    dead = start(a)
    recorded = sweeps.loop.bookkeeping.write_trial_batch

    def then_the_stale_check(storage, trial_id, *args):
        recorded(storage, trial_id, *args)
        storage.get_heartbeat_stale_trial_callback = lambda: RetryHeartbeatStaleTrialCallback(max_retry=1)
        monkeypatch.setattr("storage.heartbeats.get_stale_trial_ids", lambda storage, study_id: [trial_id])
        fail_stale_trials(a.study)

    monkeypatch.setattr(sweeps.loop.bookkeeping, "write_trial_batch", then_the_stale_check)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        a.close_unfinished(dead, "interrupted")
    assert [t.state.name for t in a.study.get_trials()] == ["FAIL", "WAITING"]
    assert a.study.get_trials()[1].system_attrs["failed_trial"] == 0


def test_closing_a_trial_whose_record_this_worker_queued_first_leaves_it_as_recorded(tmp_path):
    """A signal between queuing a trained trial's record and forgetting it as open (the sweep loops'
    last statements for a trial): the abort's close comes after the record, and changes nothing."""
    a, _ = two_workers(tmp_path, n_trials=2)
    trained = start(a)
    a.finish(trained, Outcome(TrialState.COMPLETE, 0.5), 0)
    a.close_unfinished(trained, "interrupted: Terminated")
    (trial,) = a.study.get_trials()
    assert (trial.state, trial.value, trial.user_attrs.get("error")) == (TrialState.COMPLETE, 0.5, None)
