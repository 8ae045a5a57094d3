"""Fewer reads per trial: one read of the study's trials per ask, one read of Optuna's migration
scripts per store, and a bookkeeper that starts no thread pools of its own. Real SQLite stores;
reads are counted with SQLAlchemy's statement events."""

from __future__ import annotations

import os
import threading
import warnings
from collections import Counter
from contextlib import contextmanager

import optuna
import pytest
import sqlalchemy
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState

from storage import ledger, open_storage
from storage.heartbeats import fail_stale_trials, heartbeat_ages
from storage.optuna_private import (
    backend_of,
    engine_of,
    enter_optimize_loop,
    rdb_models,
    study_id_of,
    study_storage,
    trial_id_of,
)
from storage.snapshot import SnapshotStorage, snapshot
from sweeps.budget.spending import Spending
from sweeps.config.plan import budget_of
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.loop.bookkeeper_process import ProcessBookkeeper
from sweeps.loop.bookkeeping import Books
from sweeps.loop.heartbeat import Heartbeat
from sweeps.loop.runner import open_study
from sweeps.search.strategies import build_pruner, build_sampler
from sweeps.trial.run_one import Outcome
from tests.conftest import TINY, merged


@contextmanager
def counted_reads(storage):
    """How many statements the store runs while the block runs: "select" the SELECTs, "all" every one."""
    counts: Counter = Counter()

    def count(conn, cursor, statement, parameters, context, executemany):
        counts["select"] += statement.lstrip().upper().startswith("SELECT")
        counts["all"] += 1

    engine = engine_of(storage)
    sqlalchemy.event.listen(engine, "before_cursor_execute", count)
    try:
        yield counts
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", count)


@pytest.fixture
def study(tmp_path) -> optuna.Study:
    storage = SnapshotStorage(open_storage(f"sqlite:///{tmp_path}/s.db"))
    study = optuna.create_study(storage=storage, study_name="s")
    for x in (1.0, 2.0):
        study.enqueue_trial({"x": x})
        trial = study.ask()
        trial.suggest_float("x", 0, 3)
        study.tell(trial, x)
    study.ask().suggest_float("x", 0, 3)  # one running trial, which Optuna re-reads on every read
    return study


def test_inside_a_snapshot_the_trials_are_read_once_and_filtered_by_state(study):
    storage = study_storage(study)
    with counted_reads(storage) as outside:
        study.get_trials(deepcopy=False)
        study.get_trials(deepcopy=False)
    with counted_reads(storage) as inside, snapshot(storage):
        everything = study.get_trials(deepcopy=False)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        study.get_trials(deepcopy=False)
    assert outside["select"] >= 2 and inside["select"] == outside["select"] // 2
    assert [t.state for t in everything] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    assert [t.number for t in running] == [2] and [t.value for t in complete] == [1.0, 2.0]
    complete[0].user_attrs["mutated"] = True  # a deep copy was asked for: the snapshot is untouched
    assert "mutated" not in study.get_trials(deepcopy=False)[0].user_attrs


def test_a_snapshot_is_the_view_at_its_first_read_and_only_on_its_thread(study):
    storage = study_storage(study)
    seen_elsewhere = []
    with snapshot(storage):
        assert len(study.get_trials(deepcopy=False)) == 3
        study.tell(study.ask(), 0.5)  # written to the store, not to the snapshot
        assert len(study.get_trials(deepcopy=False)) == 3
        other = threading.Thread(target=lambda: seen_elsewhere.append(len(study.get_trials(deepcopy=False))))
        other.start()
        other.join()
    assert seen_elsewhere == [4], "another thread reads the store"
    assert len(study.get_trials(deepcopy=False)) == 4, "after the block, reads go to the store again"


def test_a_trial_created_in_a_snapshot_is_read_back_from_its_creation_once(study):
    storage = study_storage(study)
    with counted_reads(storage) as outside:
        study.ask()
    with snapshot(storage):
        with counted_reads(storage) as inside:
            trial = study.ask()
        created = trial._cached_frozen_trial
        stored = backend_of(storage).get_trial(trial_id_of(trial))
        assert (created.number, created.state, created.datetime_start, created.params) == (
            stored.number, stored.state, stored.datetime_start, stored.params)
        trial.suggest_float("x", 0, 3)
        assert "x" in storage.get_trial(trial_id_of(trial)).params, "the second read goes to the store"
    assert inside["select"] <= outside["select"] - 5, (inside, outside)


def reads_of_one_ask(config, study: optuna.Study) -> int:
    books = Books(study, config, n_trials=20)
    for value in (1.0, 2.0, 3.0):  # past TPE's start-up trials, so its joint model samples
        ref, _ = books.ask()
        study.tell(books.open.pop(trial_id_of(ref)), value)
    with counted_reads(study_storage(study)) as reads:
        ref, _ = books.ask()
    assert set(ref.params) == {"batch_size", "base_lr", "warmup_fraction"}
    return reads["select"]


def test_an_ask_with_hyperband_reads_the_trials_once(tmp_path):
    """TPE + Hyperband read the trials once per suggested parameter (a bracket study each) without it."""
    config = parse_config(merged(TINY, {
        "sampler": {"name": "tpe", "n_startup_trials": 2},
        "pruner": {"name": "hyperband"},
        "search": {"batch_size": [16, 64], "base_lr": {"low": 0.01, "high": 0.1, "log": True},
                   "warmup_fraction": {"low": 0.0, "high": 0.1}},
        "study": {"n_trials": 20},
    }), tmp_path)
    with_snapshots = reads_of_one_ask(config, open_study(config, target_of(config), n_train=256))
    plain = config.sampler, config.pruner
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/plain.db"), study_name="plain",
                                sampler=build_sampler(plain[0], config.search, 0),
                                pruner=build_pruner(plain[1], budget_of(config), 256))
    assert not isinstance(study_storage(study), SnapshotStorage)
    without = reads_of_one_ask(config, study)
    assert with_snapshots <= 0.55 * without, (with_snapshots, without)


class ThreadCounter:
    def start_bookkeeping(self, in_child: bool) -> None:
        pass

    def stop_bookkeeping(self) -> None:
        pass

    def interrupt(self) -> None:
        pass

    def threads(self) -> tuple[int, int]:
        """(native threads of this process, threads Python started)."""
        return len(os.listdir("/proc/self/task")), threading.active_count()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux only")
def test_the_bookkeeper_starts_no_native_thread_pools():
    """A BLAS or OpenMP pool started in the child spins on the cores training runs on."""
    book = ProcessBookkeeper(ThreadCounter())
    try:
        native, python = book.submit("threads").result(timeout=30)
    finally:
        book.shutdown()
    assert native == python, f"{native - python} native threads besides Python's"


def running_trials(storage, n: int) -> optuna.Study:
    """A study with `n` trials running, as other workers' trials are."""
    study = optuna.create_study(storage=storage, study_name=f"running-{n}")
    enter_optimize_loop(study)  # as the bookkeeper's thread does (no heartbeat warning)
    for _ in range(n):
        study.ask().suggest_float("x", 0, 3)
    return study


def test_an_ask_reads_only_the_waiting_trials_however_many_run(tmp_path):
    """Optuna's ask looks for a queued trial through the cache, which reads every running trial first:
    through SnapshotStorage the look is one query, whatever the number of running trials."""
    storage = SnapshotStorage(open_storage(f"sqlite:///{tmp_path}/s.db"))
    reads = []
    for n in (1, 30):
        study = running_trials(storage, n)
        optuna.load_study(study_name=study.study_name, storage=storage).ask()  # a worker's first ask
        with counted_reads(storage) as counts, snapshot(storage):
            study.ask()
        reads.append(counts["select"])
    assert reads[0] == reads[1] <= 3, reads


def test_a_queued_trial_is_asked_once_and_the_cache_sees_it_run_and_finish(tmp_path):
    storage = SnapshotStorage(open_storage(f"sqlite:///{tmp_path}/s.db"))
    study = running_trials(storage, 2)
    study.enqueue_trial({"x": 2.5})
    other = optuna.load_study(study_name=study.study_name, storage=storage)
    with snapshot(storage):
        trial = study.ask()
    assert trial.suggest_float("x", 0, 3) == 2.5 and trial.number == 2
    assert other.ask().number == 3, "a queued trial goes to one worker"
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 4
    study.tell(trial, 1.0)
    assert study.get_trials()[2].state == TrialState.COMPLETE and study.get_trials()[2].params == {"x": 2.5}


def test_a_heartbeat_is_one_statement_and_stale_trials_are_optunas(tmp_path):
    """SnapshotStorage beats in one statement and finds the trials Optuna's own check finds: those whose
    heartbeat is older than the grace period; fail_stale_trials fails and queues them again."""
    backend = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1, grace_period=2, max_retry=1)
    storage = SnapshotStorage(backend)
    study = running_trials(storage, 3)
    trials = study.get_trials()
    with counted_reads(storage) as statements:
        for trial in trials:
            storage.record_heartbeat(trial._trial_id)  # the first beat inserts
        storage.record_heartbeat(trials[0]._trial_id)  # a later one updates
    assert statements["select"] == 0 and statements["all"] == 4
    beats = rdb_models.TrialHeartbeatModel.__table__
    with engine_of(storage).begin() as connection:  # two trials' workers stopped 10 s ago
        connection.execute(sqlalchemy.update(beats).where(beats.c.trial_id != trials[0]._trial_id)
                           .values(heartbeat=sqlalchemy.func.datetime("now", "-10 seconds")))
    stale = [t._trial_id for t in trials[1:]]
    assert storage._get_stale_trial_ids(study._study_id) == stale == backend._get_stale_trial_ids(study._study_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # asks study._storage._get_stale_trial_ids
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]


def stale_study(tmp_path, n_stale: int) -> optuna.Study:
    """A study (heartbeat 1 s, grace 2 s, one retry) with one live running trial and `n_stale` whose
    workers stopped beating 10 s ago."""
    storage = SnapshotStorage(open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1, grace_period=2,
                                           max_retry=1))
    study = running_trials(storage, 1 + n_stale)
    for trial in study.get_trials():
        storage.record_heartbeat(trial._trial_id)
    beats = rdb_models.TrialHeartbeatModel.__table__
    with engine_of(storage).begin() as connection:
        connection.execute(sqlalchemy.update(beats).where(beats.c.trial_id != study.get_trials()[0]._trial_id)
                           .values(heartbeat=sqlalchemy.func.datetime("now", "-10 seconds")))
    return study


@pytest.mark.parametrize("how", ["service", "optuna"])
def test_a_stale_trial_failed_just_before_a_lost_connection_is_still_queued_again(tmp_path, how):
    """The connection drops right after the first stale trial's failure is written, before its retry
    is queued: the stale check, run again as `with_retry` runs it, still queues that retry, once
    (`storage.heartbeats.fail_stale_trials`: the failure and the retry in one transaction, rolled back
    together). Optuna's own fail_stale_trials, run again, no longer finds the trial stale, and its retry
    is lost."""
    study = stale_study(tmp_path, n_stale=2)
    seen = {"a failure": False, "the drop": False}

    def drop_after_the_first_failure(conn, cursor, statement, parameters, context, executemany):
        if seen["a failure"] and not seen["the drop"]:
            seen["the drop"] = True
            raise sqlalchemy.exc.OperationalError(statement, parameters, Exception("server closed the connection"))
        seen["a failure"] |= statement.startswith("UPDATE trials SET state")

    sqlalchemy.event.listen(engine_of(study_storage(study)), "before_cursor_execute", drop_after_the_first_failure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        check = (lambda: fail_stale_trials(study)) if how == "service" else (
            lambda: optuna.storages.fail_stale_trials(study))
        with pytest.raises(StorageInternalError):
            check()
        check()  # what with_retry does next
    assert seen["the drop"]
    trials = study.get_trials()
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    retried = sorted(t.system_attrs["failed_trial"] for t in trials if t.state == TrialState.WAITING)
    assert failed == [1, 2]
    if how == "service":
        assert retried == [1, 2], "every failed trial queued again, once"
    else:
        assert retried == [2], "Optuna's check loses the retry of the trial it failed before the drop"


@pytest.mark.parametrize("how", ["service", "optuna"])
def test_no_other_worker_sees_a_stale_trial_failed_and_its_retry_not_yet_queued(tmp_path, how):
    """Another worker looks at the study while the retry of a stale trial is being queued. With the
    failure and the retry in one transaction (`storage.heartbeats.fail_stale_trials`) it still sees
    the trial running, its slot taken. Optuna's own fail_stale_trials commits the failure first: the
    other worker sees a slot free and no trial queued for it, makes a new trial for it, and the retry
    is left unrun at the end of the study (a run of tests/test_pooler.py: 20 trials finished, the
    killed worker's retry WAITING)."""
    study = stale_study(tmp_path, n_stale=1)
    other = open_storage(f"sqlite:///{tmp_path}/s.db")  # another worker's connection
    seen = []

    def look_while_the_retry_is_made(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO trials ") and not seen:
            trials = other.get_all_trials(study._study_id, deepcopy=False)
            seen.append(sorted(t.state.name for t in trials))

    sqlalchemy.event.listen(engine_of(study_storage(study)), "before_cursor_execute", look_while_the_retry_is_made)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study) if how == "service" else optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]
    assert study.get_trials()[2].system_attrs["failed_trial"] == 1
    assert seen == ([["RUNNING", "RUNNING"]] if how == "service" else [["FAIL", "RUNNING"]])


def test_a_lost_connection_in_a_finished_trials_callbacks_is_retried(tmp_path):
    """After a trial is recorded, the progress line and the trial log read the store again: a database
    restart at that moment is ridden out there too (a compose worker, not --quiet, exited on it once:
    `Progress.refresh` read the study's trials without a retry)."""
    config = parse_config(merged(TINY, {"study": {"n_trials": 3}}), tmp_path)
    study = open_study(config, target_of(config), n_train=256)
    seen = []

    def progress_line(study: optuna.Study, trial) -> None:
        seen.append(trial.number)
        if len(seen) == 1:
            lost = StorageInternalError("An exception is raised during the commit.")
            lost.__cause__ = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("shutting down"))
            raise lost
        study.get_trials(deepcopy=False)

    books = Books(study, config, n_trials=3, callbacks=[progress_line])
    ref, _ = books.ask()
    books.finish(ref.trial_id, Outcome(TrialState.COMPLETE, value=0.5), 0)
    assert seen == [ref.number, ref.number], "the callback runs again once the store answers"
    assert study.get_trials()[0].state == TrialState.COMPLETE


def test_a_trial_failed_as_stale_by_another_worker_is_not_an_error_for_its_own_worker(tmp_path, caplog):
    """A worker cut off from the store for longer than the grace period finds its trial failed (and
    queued again) by another worker's stale check: recording it is a warning, the ledger is settled
    with what it cost, and the worker goes on (it exited with 'Trial#1 has already finished' once,
    when another test restarted PostgreSQL under a 3 s grace period)."""
    config = parse_config(merged(TINY, {"study": {"n_trials": 3, "total_budget": {"amount": 1000, "unit": "updates"}}}),
                          tmp_path)
    target = target_of(config)
    study = open_study(config, target, n_train=256)
    books = Books(study, config, n_trials=3, spending=Spending.of(config, budget_of(config), 256))
    ref, point = books.ask()
    assert books.budget.reserve(ref.trial_id, point, ())[0]
    study_storage(study).set_trial_state_values(ref.trial_id, state=TrialState.FAIL)  # the other worker's check
    attrs = {"updates": 17, "examples": 17 * 16}
    with caplog.at_level("WARNING", logger="sweeps"):
        books.finish(ref.trial_id, Outcome(TrialState.COMPLETE, value=0.5, attrs=attrs), 0)
    assert f"trial {ref.number} was failed as stale by another worker" in caplog.text
    assert study.get_trials()[0].state == TrialState.FAIL
    books_now = ledger.read(engine_of(study_storage(study)), study_id_of(study))
    assert books_now.open == 0 and books_now.spent == 17


def test_a_pruning_decision_on_a_trial_another_worker_failed_as_stale_stops_it_without_an_error(tmp_path, caplog):
    """The worker reports its trial's evaluation after being cut off longer than the grace period, and
    another worker has failed the trial as stale: the decision is to stop training it (not an error
    that ends the worker: a worker printed 'error: Trial#1 has already finished' once after a
    PostgreSQL restart), and recording it then is the warning of `closed_elsewhere`."""
    config = parse_config(merged(TINY, {"study": {"n_trials": 3}}), tmp_path)
    study = open_study(config, target_of(config), n_train=256)
    books = Books(study, config, n_trials=3)
    ref, _ = books.ask()
    assert books.decide(ref.trial_id, 0.5, 10) is False  # a first report: no pruning yet
    study_storage(study).set_trial_state_values(ref.trial_id, state=TrialState.FAIL)  # the other worker's check
    assert books.decide(ref.trial_id, 0.4, 20) is True
    with caplog.at_level("WARNING", logger="sweeps"):
        books.finish(ref.trial_id, Outcome(TrialState.PRUNED, attrs={"updates": 20, "examples": 320}), 0)
    assert f"trial {ref.number} was failed as stale by another worker" in caplog.text
    assert study.get_trials()[0].state == TrialState.FAIL


def test_closing_a_trial_another_worker_failed_as_stale_neither_raises_nor_queues_it_twice(tmp_path):
    """A worker stopping (or refused by the total budget) closes its open trials: one another
    worker already failed as stale, and queued again, is left as it is (the worker exited 1 on
    'has already finished' in `abort`)."""
    config = parse_config(merged(TINY, {"study": {"n_trials": 3}}), tmp_path)
    study = open_study(config, target_of(config), n_train=256)
    books = Books(study, config, n_trials=3)
    ref, _ = books.ask()
    storage = study_storage(study)
    storage.set_trial_state_values(ref.trial_id, state=TrialState.FAIL)  # the other worker's stale check
    books.close_unfinished(ref.trial_id, "interrupted: Terminated")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL], "queued again here: only the stale check's worker does"
    assert "error" not in trials[0].user_attrs


def test_a_trials_first_heartbeat_rides_out_a_lost_connection(tmp_path):
    """The first beat comes right after the ask, outside the beat thread's own error handling: a store
    unreachable at that moment (its first heartbeat statement fails as a lost connection does) is
    retried, not raised, so a server restart at that instant does not end the worker."""
    storage = SnapshotStorage(open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=60, grace_period=120))
    study = running_trials(storage, 1)
    trial_id = study.get_trials()[0]._trial_id
    lost: list[str] = []

    def lose_the_first(conn, cursor, statement, parameters, context, executemany):
        if "trial_heartbeats" in statement and not lost:
            lost.append(statement)
            raise sqlalchemy.exc.OperationalError(statement, parameters, Exception("server closed the connection"))

    engine = engine_of(storage)
    sqlalchemy.event.listen(engine, "before_cursor_execute", lose_the_first)
    try:
        Heartbeat(study).add(trial_id)
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", lose_the_first)
    assert lost, "the outage was not injected"
    assert trial_id in heartbeat_ages(storage, study._study_id)

