"""Write a trial's attributes and learning curve (or several study system attributes) in one
transaction instead of one per value.

A trial records about twenty values; through Optuna's public API each is its own transaction,
which costs more than a short trial's training. For an RDB store the same rows are written through
Optuna's own table models in one session; any other store falls back to the public calls.
Only unfinished trials are written, and Optuna caches finished trials only, so no cache goes stale.
On PostgreSQL and SQLite a trial's write is three statements: its state, then one upsert per table.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy import String, and_, cast, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from storage.optuna_private import rdb_backend, rdb_models, rdb_session, trial_id_of

UPSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}  # INSERT ... ON CONFLICT DO UPDATE


def write_trial_batch(storage: optuna.storages.BaseStorage, trial_id: int, user_attrs: dict[str, Any],
                      intermediate_values: dict[int, float]) -> None:
    backend = rdb_backend(storage)
    if backend is None:
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for step, value in intermediate_values.items():
            storage.set_trial_intermediate_value(trial_id, step, value)
        return
    attr_model, value_model = rdb_models.TrialUserAttributeModel, rdb_models.TrialIntermediateValueModel
    with rdb_session(backend) as session:
        state = session.execute(select(rdb_models.TrialModel.state)
                                .where(rdb_models.TrialModel.trial_id == trial_id)).scalar_one_or_none()
        if state is None:
            raise KeyError(f"no trial with id {trial_id}")
        backend.check_trial_is_updatable(trial_id, state)
        attrs = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                 for key, value in user_attrs.items()]
        steps = []
        for step, value in intermediate_values.items():
            stored, kind = value_model.intermediate_value_to_stored_repr(value)
            steps.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                          "intermediate_value_type": kind})
        insert = UPSERTS.get(session.get_bind().dialect.name)
        if insert is not None:
            # one INSERT ... ON CONFLICT DO UPDATE per table (Optuna's unique keys: trial and key, trial and
            # step), no rows read back and no ORM objects
            for model, rows, keys in ((attr_model, attrs, ("trial_id", "key")),
                                      (value_model, steps, ("trial_id", "step"))):
                if rows:
                    statement = insert(model.__table__)
                    session.execute(statement.on_conflict_do_update(
                        index_elements=list(keys),
                        set_={column: statement.excluded[column] for column in rows[0] if column not in keys}), rows)
            return
        stored_attrs = {a.key: a for a in session.query(attr_model).filter(attr_model.trial_id == trial_id)}
        for row in attrs:
            if row["key"] in stored_attrs:
                stored_attrs[row["key"]].value_json = row["value_json"]
            else:
                session.add(attr_model(**row))
        stored_steps = {v.step: v for v in session.query(value_model).filter(value_model.trial_id == trial_id)}
        for row in steps:
            if row["step"] in stored_steps:
                stored = stored_steps[row["step"]]
                stored.intermediate_value, stored.intermediate_value_type = (row["intermediate_value"],
                                                                            row["intermediate_value_type"])
            else:
                session.add(value_model(**row))


def count_trials(storage: optuna.storages.BaseStorage, study_id: int, states: tuple[TrialState, ...],
                 below_number: int | None = None) -> int:
    """How many of the study's trials are in `states` (and numbered below `below_number`).

    One COUNT query on an RDB store, where reading the trials themselves would load every running
    trial's parameters and values from the database on each call.
    """
    backend = rdb_backend(storage)
    if backend is None:
        trials = storage.get_all_trials(study_id, deepcopy=False, states=states)
        return sum(1 for t in trials if below_number is None or t.number < below_number)
    trial_model = rdb_models.TrialModel
    with rdb_session(backend) as session:
        query = session.query(trial_model).filter(trial_model.study_id == study_id, trial_model.state.in_(states))
        if below_number is not None:
            query = query.filter(trial_model.number < below_number)
        return query.count()


def set_study_system_attrs(storage: optuna.storages.BaseStorage, study_id: int, attrs: dict[str, Any]) -> None:
    """Set several study system attributes in one transaction on an RDB store."""
    backend = rdb_backend(storage)
    if backend is None:
        for key, value in attrs.items():
            storage.set_study_system_attr(study_id, key, value)
        return
    model = rdb_models.StudySystemAttributeModel
    with rdb_session(backend, True) as session:
        study = rdb_models.StudyModel.find_or_raise_by_id(study_id, session)
        existing = {a.key: a for a in session.query(model).filter(model.study_id == study.study_id,
                                                                    model.key.in_(list(attrs)))}
        for key, value in attrs.items():
            if key in existing:
                existing[key].value_json = json.dumps(value)
            else:
                session.add(model(study_id=study_id, key=key, value_json=json.dumps(value)))


def mark_running_trial(storage: optuna.storages.BaseStorage, trial_id: int, key: str) -> None:
    """Set the trial system attribute `key` to the trial's own id while the trial runs (a finished
    trial is left as it is). The value names the trial, so a mark copied from another trial (a retry
    carries the system attributes of the trial it retries, `optuna.storages.RetryHeartbeatStaleTrialCallback`)
    is no mark until this one overwrites it (`count_running`). One INSERT ... SELECT on PostgreSQL and SQLite."""
    backend = rdb_backend(storage)
    insert = None if backend is None else UPSERTS.get(backend.engine.dialect.name)
    if insert is None:
        if storage.get_trial(trial_id).state == TrialState.RUNNING:
            storage.set_trial_system_attr(trial_id, key, trial_id)
        return
    trial_model, attr_model = rdb_models.TrialModel, rdb_models.TrialSystemAttributeModel
    running = (select(literal(trial_id), literal(key), literal(json.dumps(trial_id)))
               .where(trial_model.trial_id == trial_id, trial_model.state == TrialState.RUNNING))
    statement = insert(attr_model.__table__).from_select(["trial_id", "key", "value_json"], running)
    with rdb_session(backend) as session:
        session.execute(statement.on_conflict_do_update(index_elements=["trial_id", "key"],
                                                        set_={"value_json": statement.excluded.value_json}))


def count_running(storage: optuna.storages.BaseStorage, study_id: int, key: str) -> tuple[int, int]:
    """The study's running trials, and how many of them `mark_running_trial` marked with `key` (a
    mark that names another trial does not count): one query on an RDB store."""
    backend = rdb_backend(storage)
    if backend is None:
        trials = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return len(trials), sum(1 for t in trials if t.system_attrs.get(key) == trial_id_of(t))
    trial_model, attr_model = rdb_models.TrialModel, rdb_models.TrialSystemAttributeModel
    own_mark = and_(attr_model.trial_id == trial_model.trial_id, attr_model.key == key,
                    attr_model.value_json == cast(trial_model.trial_id, String))
    with rdb_session(backend) as session:
        running, marked = session.execute(
            select(func.count(trial_model.trial_id), func.count(attr_model.trial_system_attribute_id))
            .select_from(trial_model)
            .outerjoin(attr_model, own_mark)
            .where(trial_model.study_id == study_id, trial_model.state == TrialState.RUNNING)).one()
        return running, marked
