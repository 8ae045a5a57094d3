"""What the service relies on in Optuna's and optuna-dashboard's private API (`storage.optuna_private`,
`storage.dashboard_formats`, the process hooks of `storage.sql`), checked against the installed versions on
real SQLite stores. A failure here names what an upgrade changed; fix the function it names, nothing else."""

from __future__ import annotations

import io
import json
import math
import sqlite3
import threading
import uuid
import warnings
from collections import Counter
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import sqlalchemy
from alembic.script import ScriptDirectory
from optuna.artifacts import FileSystemArtifactStore
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.trial import TrialState

import storage.sql
from storage import install_process_hooks, open_storage
from storage.batch import count_trials, set_study_system_attrs, write_trial_batch
from storage.dashboard_formats import (
    ARTIFACT_KEY_PREFIX,
    CHUNK,
    PLOT_DATA_KEY_PREFIX,
    artifact_key,
    artifact_meta,
    chunks,
    note_str_key_prefix,
    note_ver_key,
    parse_artifact_key,
    plot_data_key_prefix,
)
from storage.optuna_private import (
    CachedStorage,
    add_trial_in_session,
    asked_system_attrs,
    backend_of,
    cache_migration_scripts,
    cached_trial,
    engine_of,
    enter_optimize_loop,
    get_stale_trial_ids,
    heartbeat_enabled,
    hyperband_bracket_study,
    rdb_backend,
    rdb_models,
    rdb_session,
    read_waiting_trials,
    stop_requested,
    study_id_of,
    study_storage,
    tell,
    trial_id_of,
)
from storage.snapshot import SnapshotStorage


@pytest.fixture
def rdb(tmp_path) -> RDBStorage:
    return open_storage(f"sqlite:///{tmp_path}/p.db")


@pytest.fixture
def study(rdb) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=rdb, study_name="s")


# --- a study, a trial ------------------------------------------------------------------------

def test_study_storage_and_study_id_name_the_study_in_its_store(rdb, study):
    other = optuna.create_study(storage=rdb, study_name="t")
    storage = study_storage(study)
    assert isinstance(storage, BaseStorage), "Study._storage is no longer the study's storage"
    assert backend_of(storage) is rdb, "Study._storage is not (Optuna's cache in front of) the store it was given"
    assert study_id_of(study) == rdb.get_study_id_from_name("s") != study_id_of(other), \
        "Study._study_id is no longer the study's id in the store"
    assert storage.get_study_name_from_id(study_id_of(study)) == "s"
    assert study_id_of(optuna.load_study(study_name="t", storage=rdb)) == study_id_of(other)


def test_trial_id_of_names_the_trial_in_its_store(rdb, study):
    study.tell(study.ask(), 0.0)
    trial = study.ask()
    tid = trial_id_of(trial)
    assert isinstance(tid, int), "Trial._trial_id is gone or no longer an int"
    assert rdb.get_trial_id_from_study_id_trial_number(study_id_of(study), trial.number) == tid, \
        "Trial._trial_id is no longer the trial's id in the store"
    study.tell(trial, 1.0)
    frozen = study.trials[-1]
    assert trial_id_of(frozen) == tid, "FrozenTrial._trial_id is no longer the trial's id in the store"
    assert rdb.get_trial(tid).number == frozen.number == 1


def test_enter_optimize_loop_lets_study_stop_run_on_this_thread_only(study):
    with pytest.raises(RuntimeError):
        study.stop()  # outside Optuna's optimize loop: refused
    assert stop_requested(study) is False
    enter_optimize_loop(study)
    refused_elsewhere = []

    def stop_on_another_thread():
        try:
            study.stop()
        except RuntimeError:
            refused_elsewhere.append(True)

    thread = threading.Thread(target=stop_on_another_thread)
    thread.start()
    thread.join()
    assert refused_elsewhere == [True], "Study._thread_local is no longer per thread"
    study.stop()  # a sampler's stop, from the bookkeeping thread: allowed now
    assert stop_requested(study) is True, "Study._stop_flag no longer records study.stop()"


def test_stop_requested_is_what_optimize_checks_after_a_trial(study):
    seen = []

    def stop_then_look(s: optuna.Study, _trial) -> None:
        s.stop()
        seen.append(stop_requested(s))

    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5, callbacks=[stop_then_look])
    assert seen == [True] and len(study.trials) == 1, "Study.optimize no longer stops on Study._stop_flag"


def test_hyperband_bracket_study_holds_the_trials_of_the_trials_bracket():
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
    study = optuna.create_study(pruner=pruner)
    for _ in range(12):
        trial = study.ask()
        trial.report(1.0, 1)
        trial.should_prune()  # sets up the brackets
        study.tell(trial, 1.0)
    seen = {}
    for trial in study.trials:
        bracket = {t.number for t in hyperband_bracket_study(pruner, study, trial).get_trials(deepcopy=False)}
        assert trial.number in bracket
        seen[frozenset(bracket)] = True
    assert len(seen) > 1 and sum(len(b) for b in seen) == len(study.trials), "the brackets no longer split the trials"
    assert hyperband_bracket_study(pruner, study, study.trials[0]).direction == study.direction


def test_enter_optimize_loop_silences_the_heartbeat_warning_of_ask(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/h.db", heartbeat_interval=60)
    study = optuna.create_study(storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat"):
        study.ask()
    enter_optimize_loop(study)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.ask()
    assert not [w for w in caught if "Heartbeat" in str(w.message)], "ask() warns inside the optimize loop"


# --- a storage -------------------------------------------------------------------------------

def test_backend_of_unwraps_optunas_cache_and_nothing_else(rdb):
    assert backend_of(rdb) is rdb
    assert backend_of(CachedStorage(rdb)) is rdb, "_CachedStorage._backend is no longer the wrapped storage"
    assert backend_of(SnapshotStorage(rdb)) is rdb
    assert backend_of(optuna.storages.get_storage(rdb)) is rdb  # whatever Optuna wraps a store in
    memory = InMemoryStorage()
    assert backend_of(memory) is memory and rdb_backend(memory) is None and engine_of(memory) is None
    assert rdb_backend(CachedStorage(rdb)) is rdb


def test_engine_of_is_the_stores_engine(rdb, tmp_path):
    engine = engine_of(SnapshotStorage(rdb))
    assert isinstance(engine, sqlalchemy.engine.Engine), "RDBStorage.engine is no longer a SQLAlchemy engine"
    assert engine.url.database == f"{tmp_path}/p.db"
    with engine.connect() as conn:
        tables = set(conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'").scalars())
    assert {"studies", "trials", "trial_user_attributes", "trial_intermediate_values"} <= tables


def test_heartbeat_enabled_and_the_stale_trials_are_what_optunas_fail_stale_trials_sees(tmp_path, rdb):
    beating = open_storage(f"sqlite:///{tmp_path}/h.db", heartbeat_interval=1, grace_period=1)
    assert heartbeat_enabled(beating) and heartbeat_enabled(CachedStorage(beating))
    assert not heartbeat_enabled(rdb) and not heartbeat_enabled(InMemoryStorage())
    study = optuna.create_study(storage=beating)
    enter_optimize_loop(study)
    trial = study.ask()
    beating.record_heartbeat(trial_id_of(trial))
    assert get_stale_trial_ids(study_storage(study), study_id_of(study)) == []
    beats = rdb_models.TrialHeartbeatModel.__table__
    with engine_of(beating).begin() as connection:
        connection.execute(sqlalchemy.update(beats).values(heartbeat=sqlalchemy.func.datetime("now", "-10 seconds")))
    assert get_stale_trial_ids(study_storage(study), study_id_of(study)) == [trial_id_of(trial)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # Optuna's own check fails what it names
    assert study.get_trials()[0].state == TrialState.FAIL


def test_rdb_models_name_the_tables_the_batch_writes_use():
    for name in ("StudyModel", "TrialModel", "TrialUserAttributeModel", "TrialIntermediateValueModel",
                 "StudySystemAttributeModel"):
        assert hasattr(rdb_models, name), f"optuna.storages._rdb.models.{name} is gone"
    assert callable(getattr(rdb_models.TrialIntermediateValueModel, "intermediate_value_to_stored_repr", None))
    for model in (rdb_models.StudyModel, rdb_models.TrialModel):
        assert callable(getattr(model, "find_or_raise_by_id", None)), f"{model.__name__}.find_or_raise_by_id is gone"


def test_rdb_session_commits_and_rolls_back_as_optunas_writes_do(rdb, study):
    sid = study_id_of(study)
    with rdb_session(rdb) as session:
        assert rdb_models.StudyModel.find_or_raise_by_id(sid, session).study_name == "s"
        session.add(rdb_models.StudySystemAttributeModel(study_id=sid, key="k", value_json=json.dumps(1)))
    assert rdb.get_study_system_attrs(sid)["k"] == 1, "the session was not committed at the end of the block"
    duplicate = rdb_models.StudySystemAttributeModel(study_id=sid, key="k", value_json=json.dumps(2))
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        with rdb_session(rdb) as session:
            session.add(duplicate)
    with rdb_session(rdb, ignore_integrity_error=True) as session:
        session.add(rdb_models.StudySystemAttributeModel(study_id=sid, key="k", value_json=json.dumps(3)))
    assert rdb.get_study_system_attrs(sid)["k"] == 1, "a failed write was not rolled back"
    with pytest.raises(optuna.exceptions.StorageInternalError):  # any other database error
        with rdb_session(rdb) as session:
            session.execute(sqlalchemy.text("SELECT * FROM no_such_table"))


def test_add_trial_in_session_adds_what_study_add_trial_adds_numbered_in_the_transaction(rdb, study):
    study.add_trial(optuna.create_trial(state=TrialState.COMPLETE, value=1.0))
    queued = optuna.create_trial(state=TrialState.WAITING, params={"x": 0.5},
                                 distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
                                 user_attrs={"u": 1}, system_attrs={"failed_trial": 0, "retry_history": [0]})
    with rdb_session(rdb) as session:
        rdb_models.StudyModel.find_or_raise_by_id(study_id_of(study), session, for_update=True)
        add_trial_in_session(rdb, study_id_of(study), queued, session)
    study.add_trial(queued)  # Optuna's own, for comparison
    ours, optunas = study.get_trials()[1:]
    assert (ours.number, optunas.number) == (1, 2)
    for trial in (ours, optunas):
        assert trial.state == TrialState.WAITING and trial.params == {"x": 0.5} and trial.user_attrs == {"u": 1}
        assert trial.system_attrs == {"failed_trial": 0, "retry_history": [0]} and trial.datetime_start is None
    with pytest.raises(optuna.exceptions.StorageInternalError):  # rolled back with its transaction
        with rdb_session(rdb) as session:
            add_trial_in_session(rdb, study_id_of(study), queued, session)
            session.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
    assert len(study.get_trials()) == 3


@pytest.mark.parametrize("wrap", [lambda s: s, CachedStorage, SnapshotStorage, None], ids=["rdb", "cached",
                                                                                            "snapshot", "memory"])
def test_the_batch_writes_match_optunas_own(rdb, wrap):
    storage = InMemoryStorage() if wrap is None else wrap(rdb)
    study = optuna.create_study(storage=storage, study_name=f"b-{uuid.uuid4().hex[:6]}")
    sid = study_id_of(study)
    finished = study.ask()
    study.tell(finished, 1.0)
    trial = study.ask()
    tid = trial_id_of(trial)
    trial.set_user_attr("kept", "yes")
    trial.report(0.5, 1)
    write_trial_batch(study_storage(study), tid, {"a": 1, "b": [1, 2], "kept": "overwritten"},
                      {1: 0.25, 2: math.inf, 3: -math.inf, 4: math.nan})
    written = study_storage(study).get_trial(tid)
    assert written.user_attrs == {"a": 1, "b": [1, 2], "kept": "overwritten"}
    assert written.intermediate_values[1] == 0.25 and written.intermediate_values[2] == math.inf
    assert written.intermediate_values[3] == -math.inf and math.isnan(written.intermediate_values[4])
    with pytest.raises(UpdateFinishedTrialError):
        write_trial_batch(study_storage(study), trial_id_of(finished), {"late": 1}, {})

    study.ask()
    storage_ = study_storage(study)
    assert count_trials(storage_, sid, (TrialState.RUNNING,)) == 2
    assert count_trials(storage_, sid, (TrialState.COMPLETE, TrialState.RUNNING)) == 3
    assert count_trials(storage_, sid, (TrialState.RUNNING,), below_number=2) == 1

    set_study_system_attrs(storage_, sid, {"x": 1, "y": {"z": [1]}})
    set_study_system_attrs(storage_, sid, {"x": 2, "w": ""})
    system = storage_.get_study_system_attrs(sid)
    assert (system["x"], system["y"], system["w"]) == (2, {"z": [1]}, "")


def test_cached_trial_is_the_trial_optunas_cache_holds(rdb, study):
    cached = SnapshotStorage(rdb)
    assert issubclass(SnapshotStorage, CachedStorage)
    sid = study_id_of(study)
    tid = cached.create_new_trial(sid)
    held = cached_trial(cached, tid)
    assert held is not None, "_CachedStorage no longer keeps a trial it created (or renamed its maps)"
    assert (held.number, held.state, trial_id_of(held)) == (0, TrialState.RUNNING, tid)
    assert cached_trial(cached, tid + 1000) is None
    assert cached_trial(CachedStorage(rdb), tid) is None  # another cache has not seen it


def test_read_waiting_trials_reads_the_queue_alone_and_the_cache_reads_them_again(rdb, study):
    cached = CachedStorage(rdb)
    sid = study_id_of(study)
    study.ask()  # a running trial, not read
    study.enqueue_trial({"x": 1.0})
    waiting = read_waiting_trials(cached, sid)
    assert [(t.number, t.state, t.system_attrs["fixed_params"]) for t in waiting] == [(1, TrialState.WAITING,
                                                                                        {"x": 1.0})]
    assert cached.get_trial_id_from_study_id_trial_number(sid, 1) == trial_id_of(waiting[0])
    assert cached.set_trial_state_values(trial_id_of(waiting[0]), TrialState.RUNNING)
    cached.set_trial_param(trial_id_of(waiting[0]), "x", 1.0, optuna.distributions.FloatDistribution(0, 2))
    assert [t.state for t in cached.get_all_trials(sid)] == [TrialState.RUNNING] * 2, "read again: it runs now"
    assert read_waiting_trials(cached, sid) == []


def test_asked_system_attrs_hold_a_retrys_origin_as_its_ask_read_them(study):
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study.get_trials()[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        retry = study.ask()
    assert asked_system_attrs(retry)["failed_trial"] == 0 == study.get_trials()[1].system_attrs["failed_trial"]
    assert "failed_trial" not in asked_system_attrs(study.ask())


def test_tell_closes_the_trial_as_study_tell_does(study):
    trials = [study.ask() for _ in range(3)]
    assert tell(study, trials[0], 1.5) is None
    tell(study, trials[1], state=TrialState.FAIL)
    tell(study, trials[1], state=TrialState.FAIL, skip_if_finished=True)
    with pytest.raises(ValueError):
        tell(study, trials[1], 2.0)  # finished already
    study.tell(trials[2], 0.5)
    assert [(t.state, t.value) for t in study.get_trials()] == [
        (TrialState.COMPLETE, 1.5), (TrialState.FAIL, None), (TrialState.COMPLETE, 0.5)]


def test_migration_scripts_are_read_once_per_store_and_the_hook_installs_once(tmp_path, monkeypatch):
    from optuna.storages._rdb.storage import _VersionManager

    cache_migration_scripts()
    installed = _VersionManager._create_alembic_script
    cache_migration_scripts()
    install_process_hooks()
    assert _VersionManager._create_alembic_script is installed, "installed twice"
    loads: Counter = Counter()
    original = ScriptDirectory.from_config.__func__

    def counting(cls, config):
        loads[config.get_main_option("sqlalchemy.url")] += 1
        return original(cls, config)

    monkeypatch.setattr(ScriptDirectory, "from_config", classmethod(counting))
    url = f"sqlite:///{tmp_path}/m.db"
    open_storage(url)
    open_storage(url)
    assert sum(loads.values()) == 1, (
        f"Optuna read its migration scripts {sum(loads.values())} times for one store: "
        "_VersionManager._create_alembic_script is no longer how it reads them")


# --- SQLite pragmas (storage.sql) ------------------------------------------------------------

def test_the_pragmas_reach_the_connection_that_creates_the_tables_once_each(tmp_path, monkeypatch):
    install_process_hooks()
    install_process_hooks()
    seen = []
    pragmas = storage.sql.sqlite_pragmas

    def recording(dbapi_connection, record):
        tables = dbapi_connection.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        seen.append((dbapi_connection, tables))  # kept alive, so no two share an id()
        pragmas(dbapi_connection, record)

    monkeypatch.setattr(storage.sql, "sqlite_pragmas", recording)
    rdb = open_storage(f"sqlite:///{tmp_path}/w.db")
    assert seen and seen[0][1] == 0, "the first connection (the one creating the tables) got no pragmas"
    connections = Counter(id(connection) for connection, _ in seen)
    assert set(connections.values()) == {1}, "pragmas set twice on one connection: the listener is installed twice"
    with engine_of(rdb).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert sqlite3.connect(tmp_path / "w.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- optuna-dashboard's formats --------------------------------------------------------------

def test_key_formats_are_the_installed_dashboards():
    from optuna_dashboard import _custom_plot_data, _note
    from optuna_dashboard.artifact import _backend

    for trial_id in (None, 0, 17):
        assert note_ver_key(trial_id) == _note.note_ver_key(trial_id), "optuna_dashboard._note.note_ver_key changed"
        assert note_str_key_prefix(trial_id) == _note.note_str_key_prefix(trial_id), \
            "optuna_dashboard._note.note_str_key_prefix changed"
    assert CHUNK == _note.SYSTEM_ATTR_MAX_LENGTH, "optuna-dashboard splits notes in chunks of another length"
    body = "ab" * (2 * CHUNK) + "c"
    assert chunks(body, note_str_key_prefix(3)) == _note.split_body(body, 3), "optuna-dashboard splits notes otherwise"
    assert PLOT_DATA_KEY_PREFIX == _custom_plot_data.SYSTEM_ATTR_PLOT_DATA
    assert chunks(body, plot_data_key_prefix("g")) == _custom_plot_data.split_plot_data(body, plot_data_key_prefix("g"))
    assert ARTIFACT_KEY_PREFIX == _backend.DASHBOARD_ARTIFACTS_ATTR_PREFIX
    assert artifact_key(5, "a-1") == _backend._dashboard_artifact_prefix(5) + "a-1"
    assert parse_artifact_key(artifact_key(5, "a-1")) == (5, "a-1") and parse_artifact_key("dashboard:note_ver") is None


def wsgi_get(app, path: str) -> tuple[str, bytes]:
    environ: dict = {}
    route, _, query = path.partition("?")
    environ.update(PATH_INFO=route, QUERY_STRING=query, REQUEST_METHOD="GET")
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], body


def test_the_dashboard_shows_what_the_service_writes(tmp_path, rdb, study):
    import optuna_dashboard

    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, 0.5)
    sid, tid = study_id_of(study), trial_id_of(trial)
    study_body, trial_body = "# study\n" + "s" * (2 * CHUNK + 7), "## trial 0"
    plot = json.dumps({"data": [{"type": "scatter", "x": [1, 2], "y": [3, 4]}], "layout": {"title": "t" * CHUNK}})
    store = FileSystemArtifactStore(str(tmp_path))
    artifact_id = str(uuid.uuid4())
    store.write(artifact_id, io.BytesIO(b"weights"))
    set_study_system_attrs(study_storage(study), sid, {
        note_ver_key(None): 1, **chunks(study_body, note_str_key_prefix(None)),
        note_ver_key(tid): 1, **chunks(trial_body, note_str_key_prefix(tid)),
        **chunks(plot, plot_data_key_prefix("sweeps-plot")),
        artifact_key(tid, artifact_id): json.dumps({**artifact_meta(artifact_id, "trial-0-best.pt"), "extra": 1}),
    })

    app = optuna_dashboard.wsgi(rdb, artifact_store=store)
    status, body = wsgi_get(app, f"/api/studies/{sid}?after=0")
    assert status.startswith("200"), status
    detail = json.loads(body)
    assert detail["note"] == {"version": 1, "body": study_body}, "the dashboard does not read the study note"
    shown = detail["trials"][0]
    assert shown["note"] == {"version": 1, "body": trial_body}, "the dashboard does not read the trial note"
    plots = {p["id"]: p["graph_object"] for p in detail["plotly_graph_objects"]}
    assert plots.get("sweeps-plot") == plot, "the dashboard does not read the plot"
    assert [(a["artifact_id"], a["filename"]) for a in shown["artifacts"]] == [(artifact_id, "trial-0-best.pt")], \
        "the dashboard does not list the trial's artifact"
    status, served = wsgi_get(app, f"/artifacts/{sid}/{tid}/{artifact_id}")
    assert status.startswith("200") and served == b"weights", "the dashboard does not serve the artifact"

    study_storage(study).set_study_system_attr(sid, artifact_key(tid, artifact_id), json.dumps(None))
    detail = json.loads(wsgi_get(app, f"/api/studies/{sid}?after=0")[1])
    assert detail["trials"][0]["artifacts"] == [], "a cleared artifact record is still listed"


def test_what_the_dashboard_writes_reads_back_with_these_keys(study):
    import optuna_dashboard
    import plotly.graph_objects as go

    body = "n" * (CHUNK + 1)
    optuna_dashboard.save_note(study, body)
    figure = go.Figure(go.Scatter(x=[1, 2], y=[2, 1]))
    optuna_dashboard.save_plotly_graph_object(study, figure, graph_object_id="g")
    system = study_storage(study).get_study_system_attrs(study_id_of(study))
    assert system[note_ver_key(None)] == 1
    prefix = note_str_key_prefix(None)
    assert "".join(system[f"{prefix}{i}"] for i in range(2)) == body and f"{prefix}2" not in system
    prefix = plot_data_key_prefix("g")
    parts = sorted((int(k[len(prefix):]), v) for k, v in system.items() if k.startswith(prefix))
    assert "".join(v for _, v in parts) == figure.to_json()
