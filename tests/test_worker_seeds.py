"""Worker numbers and seeds: what each worker and each retry trains with.

What it specifies, in this order:

1. a retried trial trains with the seed of the trial it retries, not with its own number's;
2. workers registering at once get distinct numbers, counted per study, on SQLite and PostgreSQL;
3. replicas started with the same command line (as compose starts them) get distinct worker
   numbers, so distinct sampler seeds, recorded on their trials, and draw different configurations;
4. a trial a worker closes without running it (it lost the race for the last slot) still names
   that worker.

Real sweeps on real SQLite in tmp_path, and on PostgreSQL where .ci/run gives its URL
(SWEEPS_TEST_POSTGRES_URL; under CI a missing URL fails instead of skipping).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
import warnings
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from storage import open_storage
from storage.optuna_private import study_id_of, trial_id_of
from storage.workers import register_worker
from sweeps.config.target import target_of
from sweeps.loop.bookkeeping import Books
from sweeps.loop.runner import open_study, run_sweep
from sweeps.search.space import suggest
from sweeps.trial.run_one import trial_seed
from tests.conftest import PG_URL, TINY, merged, needs_pg
from tests.test_workers import with_peers

REPO = Path(__file__).resolve().parents[1]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def write_study(folder: Path, name: str = "tiny", **overrides) -> Path:
    """A tiny study file that names its own store, as the shipped examples do."""
    data = merged(merged(TINY, {"study": {"name": name, "storage": "sqlite:///from_file.db"}}), overrides)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- 1. a retry trains with the original's seed -----------------------------------------------------

def test_a_retried_trial_trains_with_the_seed_of_the_trial_it_retries(tmp_path, tiny_config):
    config = tiny_config(study={"n_trials": 1, "seed": 7})
    target = target_of(config)
    study = open_study(config, target, n_train=256)
    original = study.ask()
    suggest(original, config.search)
    study.tell(original, state=TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[0])
    run_sweep(config, target, show_progress=False)
    retried = optuna.load_study(study_name="tiny", storage=target.storage_url).trials[1]
    assert retried.state == TrialState.COMPLETE
    assert retried.user_attrs["seed"] == trial_seed(7, original.number) != trial_seed(7, retried.number)


# --- 2. distinct worker numbers -------------------------------------------------------------------

def register_concurrently(url: str, study_id: int, n: int) -> list[int]:
    storage = open_storage(url)
    numbers: list[int] = []
    threads = [threading.Thread(target=lambda: numbers.append(register_worker(storage, study_id))) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return numbers


def test_workers_registering_at_once_get_distinct_numbers_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path}/w.db"
    study_id = study_id_of(optuna.create_study(storage=open_storage(url), study_name="w"))
    assert sorted(register_concurrently(url, study_id, 6)) == list(range(6))
    assert register_worker(open_storage(url), study_id + 1) == 0  # numbers count per study


@needs_pg
def test_workers_registering_at_once_get_distinct_numbers_on_postgres():
    name = f"register-{uuid.uuid4().hex[:8]}"
    study_id = study_id_of(optuna.create_study(storage=open_storage(PG_URL), study_name=name))
    try:
        assert sorted(register_concurrently(PG_URL, study_id, 6)) == list(range(6))
    finally:
        optuna.delete_study(study_name=name, storage=PG_URL)


# --- 3. replicas draw their own sampler seeds -------------------------------------------------------

def test_replicas_started_with_the_same_command_draw_different_configurations(tmp_path):
    """Two processes with one command line, as compose replicas start: distinct worker numbers,
    so distinct sampler seeds, recorded on their trials. Each replica's first trial waits until
    both have reached theirs (`regression_with_peers`): without it, the first to start finished all
    10 tiny trials before the second asked for one (a fresh-clone CI run), and one seed was recorded."""
    peers = with_peers(tmp_path, 2)
    study = write_study(tmp_path, study={"n_trials": 10}, sampler={"name": "random"},
                        objective={**peers, "options": {**peers["options"], "replicas": True}})
    env = {k: v for k, v in os.environ.items() if k != "SWEEPS_STORAGE"}
    env.update(PYTHONPATH=str(REPO), SWEEPS_STORAGE=f"sqlite:///{tmp_path}/shared.db")
    procs = [subprocess.Popen([sys.executable, "-m", "sweeps.run", str(study), "--quiet"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    study = optuna.load_study(study_name="tiny", storage=env["SWEEPS_STORAGE"])
    trials = study.get_trials(states=FINISHED)  # a trial closed before it ran records no worker
    seeds = {t.user_attrs["worker"]: t.user_attrs["sampler_seed"] for t in trials}
    assert set(seeds) == {0, 1} and seeds[0] != seeds[1]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)


# --- 4. a trial closed unrun names its worker -------------------------------------------------------

def test_a_trial_closed_before_it_runs_names_the_worker_that_asked_it(tmp_path, tiny_config):
    """Workers racing for the last slot close the loser's trial unrun; it still says whose it was
    (a fresh-clone run found such a trial without a `worker` attribute)."""
    config = tiny_config(study={"n_trials": 1})
    study = open_study(config, target_of(config), n_train=256)
    books = Books(study, config, n_trials=1, identity={"worker": 1, "sampler_seed": 1})
    lost = study.ask()
    books.heartbeat.add(trial_id_of(lost))
    books.close_unfinished_quietly(lost)
    closed = study.trials[0]
    assert closed.state == TrialState.FAIL
    assert (closed.user_attrs["worker"], closed.user_attrs["sampler_seed"]) == (1, 1)
    assert closed.user_attrs["error"].startswith("not started")
