"""How old each running trial's heartbeat is: what a worker waiting for a dead worker's trials
tells its user (how long until they go stale and are queued again).

Read on the database's clock, as Optuna judges staleness (`RDBStorage._get_stale_trial_ids`), so
a worker whose clock is off still counts the same seconds.
"""

from __future__ import annotations

import sqlalchemy
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from storage.optuna_private import rdb_backend, rdb_models, rdb_session


def heartbeat_ages(storage: BaseStorage, study_id: int) -> dict[int, float]:
    """Seconds since the last heartbeat, per trial id, of the study's RUNNING trials that have one."""
    backend = rdb_backend(storage)
    if backend is None:
        return {}
    trial, beat = rdb_models.TrialModel, rdb_models.TrialHeartbeatModel
    with rdb_session(backend) as session:
        now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
        rows = (session.query(trial.trial_id, beat.heartbeat)
                .join(beat, beat.trial_id == trial.trial_id)
                .filter(trial.study_id == study_id, trial.state == TrialState.RUNNING)
                .all())
    return {trial_id: (now - heartbeat.replace(tzinfo=None)).total_seconds() for trial_id, heartbeat in rows}


def grace_period_of(storage: BaseStorage) -> float | None:
    """Seconds without a heartbeat before a running trial is stale; None without heartbeats."""
    backend = rdb_backend(storage)
    if backend is None or not backend.heartbeat_interval:
        return None
    return float(backend.grace_period or 2 * backend.heartbeat_interval)
