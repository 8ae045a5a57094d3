"""Heartbeats in the store: how old each running trial's heartbeat is (what a worker waiting for a
dead worker's trials tells its user: how long until they go stale and are queued again), which
trials are stale, and a beat.

Read and written on the database's clock, as Optuna does (`RDBStorage.record_heartbeat`,
`RDBStorage._get_stale_trial_ids`), so a worker whose clock is off still counts the same seconds.
Optuna's own beat is four statements (the row read twice, once FOR UPDATE, then the clock, then
the write) and its stale check loads every running trial of the study with its heartbeats as ORM
objects; here a beat is one upsert and the check one query of two
columns, which `storage.snapshot.SnapshotStorage` answers Optuna with. At 64 workers these run
hundreds of times a minute.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable

import optuna
import sqlalchemy
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from storage.batch import UPSERTS
from storage.optuna_private import (
    add_trial_in_session,
    get_stale_trial_ids,
    heartbeat_enabled,
    rdb_backend,
    rdb_models,
    rdb_session,
    study_id_of,
    study_storage,
)


def heartbeat_ages(storage: BaseStorage, study_id: int) -> dict[int, float]:
    """Seconds since the last heartbeat, per trial id, of the study's RUNNING trials that have one."""
    backend = rdb_backend(storage)
    if backend is None:
        return {}
    trial, beat = rdb_models.TrialModel, rdb_models.TrialHeartbeatModel
    with rdb_session(backend) as session:
        rows = (session.query(trial.trial_id, beat.heartbeat, sqlalchemy.func.now())  # the clock in the same query
                .join(beat, beat.trial_id == trial.trial_id)
                .filter(trial.study_id == study_id, trial.state == TrialState.RUNNING)
                .all())
    return {trial_id: (now.replace(tzinfo=None) - heartbeat.replace(tzinfo=None)).total_seconds()
            for trial_id, heartbeat, now in rows}


def stale_trial_ids(storage: BaseStorage, study_id: int) -> list[int]:
    """The study's RUNNING trials whose heartbeat is older than the grace period, as Optuna's
    `RDBStorage._get_stale_trial_ids` judges them (a trial without a heartbeat is never stale:
    `adopt_trials_without_heartbeat` dates it first)."""
    grace = grace_period_of(storage)
    if grace is None:
        return []
    return sorted(trial_id for trial_id, age in heartbeat_ages(storage, study_id).items() if age > grace)


def record_heartbeat(storage: BaseStorage, trial_id: int) -> None:
    """The trial's heartbeat set to the database's clock in one statement (Optuna's
    `RDBStorage.record_heartbeat` takes four): an upsert on PostgreSQL and SQLite (Optuna's table keeps
    one row per trial), elsewhere an UPDATE, or an INSERT for its first beat. A store that is not SQL
    beats through its own call."""
    backend = rdb_backend(storage)
    if backend is None:
        storage.record_heartbeat(trial_id)
        return
    beat = rdb_models.TrialHeartbeatModel.__table__
    # a beat racing another process's first beat of the same trial loses to it (unique trial_id): that
    # one is as fresh, so the IntegrityError is ignored, as Optuna's beat does
    with rdb_session(backend, True) as session:
        upsert = UPSERTS.get(session.get_bind().dialect.name)
        if upsert is not None:
            statement = upsert(beat).values(trial_id=trial_id, heartbeat=sqlalchemy.func.now())
            session.execute(statement.on_conflict_do_update(index_elements=[beat.c.trial_id],
                                                            set_={"heartbeat": sqlalchemy.func.now()}))
            return
        updated = session.execute(sqlalchemy.update(beat).where(beat.c.trial_id == trial_id)
                                  .values(heartbeat=sqlalchemy.func.now()))
        if updated.rowcount == 0:
            session.execute(sqlalchemy.insert(beat).values(trial_id=trial_id, heartbeat=sqlalchemy.func.now()))


def adopt_trials_without_heartbeat(storage: BaseStorage, study_id: int) -> int:
    """Give every RUNNING trial of the study that has no heartbeat row one, dated now on the database's
    clock; the number given. Optuna never judges such a trial stale, so a worker that died between its
    ask and its first beat, or an ask whose commit reached the store while its reply was lost (a server
    restart; the retried ask makes a second trial), would hold its slot for ever and keep the study
    from ending. Once dated, it goes stale a grace period on unless its worker beats, and is failed
    and queued again as any other. A live worker's first beat, an upsert, simply moves the date on."""
    backend = rdb_backend(storage)
    if backend is None or grace_period_of(storage) is None:
        return 0
    trial, beat = rdb_models.TrialModel.__table__, rdb_models.TrialHeartbeatModel.__table__
    unbeaten = (sqlalchemy.select(trial.c.trial_id, sqlalchemy.func.now())
                .where(trial.c.study_id == study_id, trial.c.state == TrialState.RUNNING,
                       ~sqlalchemy.exists().where(beat.c.trial_id == trial.c.trial_id)))
    with rdb_session(backend, True) as session:  # two workers adopting at once: the loser's rows exist
        insert = UPSERTS.get(session.get_bind().dialect.name)
        if insert is not None:
            statement = (insert(beat).from_select(["trial_id", "heartbeat"], unbeaten)
                         .on_conflict_do_nothing(index_elements=[beat.c.trial_id]).returning(beat.c.trial_id))
            return len(session.execute(statement).all())
        return session.execute(sqlalchemy.insert(beat).from_select(["trial_id", "heartbeat"], unbeaten)).rowcount


def grace_period_of(storage: BaseStorage) -> float | None:
    """Seconds without a heartbeat before a running trial is stale; None without heartbeats."""
    backend = rdb_backend(storage)
    if backend is None or not backend.heartbeat_interval:
        return None
    return float(backend.grace_period or 2 * backend.heartbeat_interval)


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's `optuna.storages.fail_stale_trials` (fail each trial whose heartbeat is older than the
    grace period, and queue it again as the store's stale-trial callback does), each trial's failure
    and its retry in one transaction (`fail_and_queue_again`). Optuna's commits the failure, then
    queues the retry: in between, the study shows a slot free with nothing queued for it (another
    worker makes a new trial there and the retry is left unrun), and a connection lost there leaves
    the trial failed and never run again."""
    storage = study_storage(study)
    if not heartbeat_enabled(storage):
        return
    callback = storage.get_heartbeat_stale_trial_callback()
    study_id = study_id_of(study)
    for trial_id in get_stale_trial_ids(storage, study_id):
        stale = copy.deepcopy(storage.get_trial(trial_id))
        fail_and_queue_again(storage, study_id, trial_id, None if callback is None else retry_made_by(callback, stale))


def fail_and_queue_again(storage: BaseStorage, study_id: int, trial_id: int, retry: FrozenTrial | None) -> None:
    """Fail the running trial and add `retry` (a WAITING trial: its configuration queued again; None:
    not again) in one transaction, so no other worker ever sees the trial failed and its retry not
    yet queued. Nothing is written when the trial is no longer running (another worker failed it
    first, or its own worker finished it)."""
    backend = rdb_backend(storage)
    with rdb_session(backend) as session:
        # the study's row first, as Optuna's trial creation locks it (the retry's number is counted there)
        rdb_models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        trial = rdb_models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        if trial.state != TrialState.RUNNING:
            return
        trial.state = TrialState.FAIL
        trial.datetime_complete = datetime.datetime.now()  # as Optuna's set_trial_state_values dates it
        if retry is not None:
            add_trial_in_session(backend, study_id, retry, session)


class _Queue:
    """What a stale-trial callback sees of the study: the one call it makes, `add_trial`, kept."""

    def __init__(self) -> None:
        self.added: FrozenTrial | None = None

    def add_trial(self, trial: FrozenTrial) -> None:
        self.added = trial


def retry_made_by(callback: Callable[[optuna.Study, FrozenTrial], None], stale: FrozenTrial) -> FrozenTrial | None:
    """The trial the store's stale-trial callback (`optuna.storages.RetryHeartbeatStaleTrialCallback`,
    its `max_retry` and all) would add to the study for `stale`, or None when it adds none."""
    queue = _Queue()
    callback(queue, stale)
    return queue.added
