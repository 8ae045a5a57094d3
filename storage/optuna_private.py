"""Every use of Optuna's private API in the project, behind named functions.

Optuna's public API has no way to name a study's or a trial's row in the store, to take part in
its optimize loop without `Study.optimize`, or to write many rows in one transaction. The service
needs all three, so it relies on a few private attributes of the installed Optuna (5.x). They are
reached only through this module; `tests/test_optuna_private.py` exercises each function against
the installed Optuna, so an upgrade that renames or changes one of them fails there, by name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages._rdb import models as rdb_models
from optuna.storages._rdb.storage import _create_scoped_session, _VersionManager
from optuna.study._tell import _tell_with_warning
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import selectinload

if TYPE_CHECKING:
    import sqlalchemy.engine
    import sqlalchemy.orm

__all__ = [
    "CachedStorage", "add_trial_in_session", "asked_system_attrs", "backend_of", "cache_migration_scripts",
    "cached_trial",
    "check_schema_one_connection_at_a_time", "engine_of", "enter_optimize_loop", "get_stale_trial_ids",
    "heartbeat_enabled", "hyperband_bracket_study", "rdb_backend", "rdb_models", "rdb_session", "read_waiting_trials",
    "stop_requested", "study_id_of", "study_storage", "tell", "trial_id_of",
]

# `rdb_models` is `optuna.storages._rdb.models`: Optuna's SQLAlchemy table models (StudyModel, TrialModel,
# TrialUserAttributeModel, TrialIntermediateValueModel, StudySystemAttributeModel), through which
# `storage.batch` writes a trial's or a study's rows in one transaction.

CachedStorage = _CachedStorage
"""`optuna.storages._cached_storage._CachedStorage`: the cache Optuna puts in front of every RDBStorage
(finished trials kept in memory). `storage.snapshot.SnapshotStorage` extends it."""


# --- a study, a trial ------------------------------------------------------------------------

def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage the study reads and writes through (`Study._storage`; for an RDB store, Optuna's
    cache in front of it). Needed to write study system attributes and to read a trial's system
    attributes, which `Study` has no public call for."""
    return study._storage


def study_id_of(study: optuna.Study) -> int:
    """The study's id in its store (`Study._study_id`): the key of every storage call about the study,
    and the id in optuna-dashboard's URLs."""
    return study._study_id


def trial_id_of(trial: Any) -> int:
    """The trial's id in its store (`Trial._trial_id`, `FrozenTrial._trial_id`; the sweep loop's
    `TrialRef` mirrors the name): the key of every storage call about the trial and of
    optuna-dashboard's notes and artifacts. The trial *number* is per study, the id per store."""
    return trial._trial_id


def enter_optimize_loop(study: optuna.Study) -> None:
    """Mark the calling thread as inside the study's optimize loop, as `Study.optimize` does for its own
    thread (`Study._thread_local.in_optimize_loop`). A sampler ends a study with `study.stop()` (the grid
    sampler, once its grid is used up), which Optuna allows only inside that loop; and `study.ask()` on a
    store with a heartbeat warns outside it. The sweep loop's bookkeeping thread plays that loop."""
    study._thread_local.in_optimize_loop = True


def stop_requested(study: optuna.Study) -> bool:
    """Whether `study.stop()` was called (`Study._stop_flag`), which `Study.optimize` checks after each
    trial; the sweep loop checks it instead."""
    return bool(study._stop_flag)


def tell(study: optuna.Study, trial: optuna.Trial, values: float | None = None, state: TrialState | None = None,
         skip_if_finished: bool = False) -> None:
    """`study.tell(trial, values, state=..., skip_if_finished=...)` without its last step, reading the
    finished trial back from the store to return it (`optuna.study._tell._tell_with_warning`, which
    `Study.tell` calls first): six queries on an RDB store that the service never used."""
    _tell_with_warning(study=study, trial=trial, value_or_values=values, state=state,
                       skip_if_finished=skip_if_finished)


def asked_system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """The trial's system attributes as its ask read them (`Trial._cached_frozen_trial`, read from the
    store when the Trial was made), without reading them again: a retry's `failed_trial`, set when it
    was queued, is there. Attributes written after the ask (by a sampler, say) are not."""
    return trial._cached_frozen_trial.system_attrs


def hyperband_bracket_study(pruner: optuna.pruners.HyperbandPruner, study: optuna.Study,
                            trial: FrozenTrial) -> optuna.Study:
    """The study as Hyperband shows it to the trial's bracket: only the trials of that bracket
    (`HyperbandPruner._get_bracket_id`, `_create_bracket_study`, as Optuna's own `_filter_study`
    does for the samplers). The noise guard finds the cut a trial competes for among them."""
    return pruner._create_bracket_study(study, pruner._get_bracket_id(study, trial))


# --- a storage -------------------------------------------------------------------------------

def backend_of(storage: BaseStorage) -> BaseStorage:
    """The storage behind Optuna's cache (`_CachedStorage._backend`), or `storage` itself when it is not
    behind one. `optuna.create_study(storage=url)` and `SnapshotStorage` wrap an RDBStorage in that cache."""
    if isinstance(storage, _CachedStorage):
        return storage._backend
    return storage


def rdb_backend(storage: BaseStorage) -> RDBStorage | None:
    """The RDBStorage behind `storage` (see `backend_of`), or None for any other store (in-memory, journal)."""
    backend = backend_of(storage)
    return backend if isinstance(backend, RDBStorage) else None


def engine_of(storage: BaseStorage) -> sqlalchemy.engine.Engine | None:
    """The SQLAlchemy engine of the RDBStorage behind `storage` (`RDBStorage.engine`, an attribute Optuna
    documents as not for users), or None when it is not an RDB store. Needed for the service's own table
    (`storage.workers`) and to give a forked process connections of its own."""
    backend = rdb_backend(storage)
    return None if backend is None else backend.engine


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether the store beats and fails stale trials (`optuna.storages._heartbeat.is_heartbeat_enabled`:
    an RDBStorage opened with a heartbeat interval, behind Optuna's cache or not)."""
    return is_heartbeat_enabled(storage)


def get_stale_trial_ids(storage: BaseStorage, study_id: int) -> list[int]:
    """What Optuna's `fail_stale_trials` asks a store for (`BaseHeartbeat._get_stale_trial_ids`; the
    service's `storage.snapshot.SnapshotStorage` answers it)."""
    return storage._get_stale_trial_ids(study_id)


def check_schema_one_connection_at_a_time(backend: RDBStorage) -> None:
    """Optuna's check that the store's schema is its own (`RDBStorage._version_manager`,
    `_VersionManager.check_table_schema_compatibility`), without holding one connection in a transaction
    while it opens another: Optuna's check reads `version_info` in a session and, inside it, asks alembic
    for the current version on a second connection. Through PgBouncer in transaction mode, more workers
    starting together than the pool's size each hold a server connection that way and wait for a second
    one, which never comes (until the pooler's query_wait_timeout). Here the versions are compared first,
    one connection at a time; only a mismatch runs Optuna's check, for its message."""
    manager = backend._version_manager
    if manager.get_current_version() == manager.get_head_version():
        return
    manager.check_table_schema_compatibility()


@contextmanager
def rdb_session(backend: RDBStorage, ignore_integrity_error: bool = False) -> Iterator[sqlalchemy.orm.Session]:
    """A session of `backend` committed at the end of the block (`optuna.storages._rdb.storage.
    _create_scoped_session` over `RDBStorage.scoped_session`): rolled back on an error, a database error
    raised as Optuna's StorageInternalError, and an IntegrityError ignored when asked, as Optuna's own
    writes do. Used with `rdb_models` to write many rows in one transaction."""
    with _create_scoped_session(backend.scoped_session, ignore_integrity_error) as session:
        yield session


def add_trial_in_session(backend: RDBStorage, study_id: int, template: FrozenTrial,
                         session: sqlalchemy.orm.Session) -> None:
    """A trial made from `template` (its state, parameters and attributes, as `Study.add_trial` makes
    one), added in `session`'s transaction (`RDBStorage._get_prepared_new_trial`), which numbers it:
    the caller holds the study's row FOR UPDATE first, as `RDBStorage._create_new_trial` does, so two
    trials never take one number."""
    backend._get_prepared_new_trial(study_id, template, session)


def cached_trial(storage: _CachedStorage, trial_id: int) -> FrozenTrial | None:
    """The trial as Optuna's cache holds it now, finished or not (not a copy), or None when the cache has
    not seen it (`_CachedStorage._trial_id_to_study_id_and_number` and `._studies[...].trials`). A trial
    is in the cache from its creation on, so `SnapshotStorage` answers Optuna's read-back of a new trial
    from it."""
    known = storage._trial_id_to_study_id_and_number.get(trial_id)
    if known is None:
        return None
    return storage._studies[known[0]].trials[known[1]]


def read_waiting_trials(storage: _CachedStorage, study_id: int) -> list[FrozenTrial]:
    """The study's WAITING trials (the retry queue, `study.enqueue_trial`), read alone from the store
    behind Optuna's cache (the query of `RDBStorage._get_trials`, without its check that the study
    exists; `RDBStorage._build_frozen_trial_from_trial_model`) and kept in that cache as unfinished
    trials (`_CachedStorage._add_trials_to_cache`, `_studies[...].unfinished_trial_ids`), so its
    next read of the study's trials reads them again, as it does every unfinished trial it holds.
    Optuna's ask looks for a waiting trial through the cache (`Study._pop_waiting_trial_id`), which
    first reads every unfinished trial of the study with its parameters and attributes (at 64
    workers, 64 running trials: seven queries and 64 trials built), for a sampler that may read no
    trial at all (random)."""
    backend, model = storage._backend, rdb_models.TrialModel
    with rdb_session(backend) as session:  # one query while none waits (Optuna's `_get_trials` checks the study first)
        rows = (session.query(model)
                .options(*(selectinload(relation) for relation in (
                    model.params, model.values, model.user_attributes, model.system_attributes,
                    model.intermediate_values)))
                .filter(model.study_id == study_id, model.state == TrialState.WAITING)
                .order_by(model.trial_id).all())
        trials = [backend._build_frozen_trial_from_trial_model(row) for row in rows]
    with storage._lock:
        study = storage._studies.setdefault(study_id, _StudyInfo())
        storage._add_trials_to_cache(study_id, trials)
        study.unfinished_trial_ids.update(trial._trial_id for trial in trials)
    return trials


# --- a process-wide speed-up -----------------------------------------------------------------

_install_lock = threading.Lock()


def cache_migration_scripts() -> None:
    """Read Optuna's schema migration scripts once per store URL per process (idempotent).

    Optuna reads them (30 Python files, about 25 ms) each time it checks the schema version
    (`_VersionManager._create_alembic_script`): three times when it creates the tables of a new store.
    They are part of the installed Optuna and never change while it runs, so one read per URL does.
    The method is replaced on the class, so every RDBStorage of the process benefits from then on."""
    with _install_lock:
        create = _VersionManager._create_alembic_script
        if getattr(create, "sweeps_read_once", False):
            return
        scripts: dict[str, object] = {}

        def read_once(self: _VersionManager):
            if self.url not in scripts:
                scripts[self.url] = create(self)
            return scripts[self.url]

        read_once.sweeps_read_once = True  # type: ignore[attr-defined]
        read_once.__wrapped__ = create  # type: ignore[attr-defined]
        _VersionManager._create_alembic_script = read_once
