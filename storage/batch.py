"""Write a trial's attributes and learning curve in one transaction instead of one per value.

A trial records about twenty values; through Optuna's public API each is its own transaction,
which costs more than a short trial's training. For an RDB store the same rows are written through
Optuna's own table models in one session; any other store falls back to the public calls.
Only unfinished trials are written, and Optuna caches finished trials only, so no cache goes stale.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState


def write_trial_batch(storage: optuna.storages.BaseStorage, trial_id: int, user_attrs: dict[str, Any],
                      intermediate_values: dict[int, float]) -> None:
    backend = getattr(storage, "_backend", storage)  # unwrap Optuna's _CachedStorage
    if not isinstance(backend, optuna.storages.RDBStorage):
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for step, value in intermediate_values.items():
            storage.set_trial_intermediate_value(trial_id, step, value)
        return
    attr_model, value_model = models.TrialUserAttributeModel, models.TrialIntermediateValueModel
    with _create_scoped_session(backend.scoped_session) as session:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
        backend.check_trial_is_updatable(trial_id, trial.state)
        attrs = {a.key: a for a in session.query(attr_model).filter(attr_model.trial_id == trial_id)}
        for key, value in user_attrs.items():
            if key in attrs:
                attrs[key].value_json = json.dumps(value)
            else:
                session.add(attr_model(trial_id=trial_id, key=key, value_json=json.dumps(value)))
        steps = {v.step: v for v in session.query(value_model).filter(value_model.trial_id == trial_id)}
        for step, value in intermediate_values.items():
            stored, kind = value_model.intermediate_value_to_stored_repr(value)
            if step in steps:
                steps[step].intermediate_value, steps[step].intermediate_value_type = stored, kind
            else:
                session.add(value_model(trial_id=trial_id, step=step, intermediate_value=stored,
                                        intermediate_value_type=kind))


def count_trials(storage: optuna.storages.BaseStorage, study_id: int, states: tuple[TrialState, ...],
                 below_number: int | None = None) -> int:
    """How many of the study's trials are in `states` (and numbered below `below_number`).

    One COUNT query on an RDB store, where reading the trials themselves would load every running
    trial's parameters and values from the database on each call.
    """
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        trials = storage.get_all_trials(study_id, deepcopy=False, states=states)
        return sum(1 for t in trials if below_number is None or t.number < below_number)
    with _create_scoped_session(backend.scoped_session) as session:
        query = session.query(models.TrialModel).filter(
            models.TrialModel.study_id == study_id, models.TrialModel.state.in_(states))
        if below_number is not None:
            query = query.filter(models.TrialModel.number < below_number)
        return query.count()
