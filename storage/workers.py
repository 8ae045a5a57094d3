"""A worker number per process, registered in the store, so that replicas started with the same
command line (compose `--scale`, a cluster array job) still draw different sampler seeds.

One small table beside Optuna's, `sweeps_workers`: (study_id, number) is its primary key, so two
processes that race for the same number cannot both insert it; the loser takes the next one. Its
`host` names the machine, and under Slurm the job too (`host_of`): `vm [slurm 12_3]` is task 3 of
array job 12, so `sweeps studies --workers` tells an array's workers apart.
"""

from __future__ import annotations

import datetime
import os
import random
import socket
import time
from collections.abc import Mapping

import optuna
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func, insert, inspect, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from storage.optuna_private import engine_of, rdb_models
from storage.retry import with_retry

WORKERS = Table(
    "sweeps_workers", MetaData(),
    Column("study_id", Integer, primary_key=True, autoincrement=False),
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("started_at", DateTime),
)
ATTEMPTS = 50


def slurm_label(env: Mapping[str, str]) -> str | None:
    """`slurm 12_3` for task 3 of array job 12 (`slurm 57` for a job that is not an array), with
    `restart 1` after Slurm requeued it once; None outside Slurm."""
    array, task, job = (env.get(name, "").strip() for name in
                        ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"))
    if array and task:
        label = f"slurm {array}_{task}"
    elif job:
        label = f"slurm {job}"
    else:
        return None
    restarts = env.get("SLURM_RESTART_COUNT", "").strip()
    return f"{label} restart {restarts}" if restarts not in ("", "0") else label


def host_of(hostname: str, env: Mapping[str, str]) -> str:
    """What the registry records as a worker's host: the machine's name, and its Slurm job."""
    label = slurm_label(env)
    suffix = f" [{label}]" if label else ""
    return hostname[:255 - len(suffix)] + suffix


def register_worker(storage: optuna.storages.BaseStorage, study_id: int) -> int:
    """This process's worker number in the study: 0 for the first process ever to run it, then
    1, 2, ... A store that is not SQL (in-memory, tests) gives 0. A database out of reach (a worker
    that starts while the server restarts) is waited for, as every storage call is (`with_retry`)."""
    engine = engine_of(storage)
    if engine is None:
        return 0
    return with_retry(lambda: take_number(engine, study_id), "the worker's registration")


def take_number(engine, study_id: int) -> int:
    """The next free number, taken in a transaction; a race lost to another worker is tried again at
    once (`ATTEMPTS` times, which a database out of reach also uses up: then `with_retry` waits)."""
    for attempt in range(ATTEMPTS):
        try:
            with engine.begin() as connection:
                WORKERS.create(connection, checkfirst=True)
                if connection.dialect.name != "sqlite":
                    # one registration at a time per study (its row in Optuna's studies table, locked until
                    # this transaction ends: through a pooler in transaction mode too), so 64 workers that
                    # start together get their numbers in turn instead of racing ATTEMPTS times for them
                    study = rdb_models.StudyModel
                    connection.execute(select(study.study_id).where(study.study_id == study_id).with_for_update())
                number = connection.execute(
                    select(func.coalesce(func.max(WORKERS.c.number) + 1, 0)).where(WORKERS.c.study_id == study_id)
                ).scalar_one()
                connection.execute(insert(WORKERS).values(
                    study_id=study_id, number=number, host=host_of(socket.gethostname(), os.environ), pid=os.getpid(),
                    started_at=datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None),
                ))
            return int(number)
        except (IntegrityError, ProgrammingError, OperationalError):
            # another worker took the number (or created the table) first: try again
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.01, 0.1))
    raise AssertionError("unreachable")


def registered_workers(engine, study_id: int) -> list[dict]:
    """The study's registered workers, by number: number, host, pid, started_at (UTC); none
    when the store has no registry (no study of it ever ran a worker)."""
    if not inspect(engine).has_table(WORKERS.name):
        return []
    with engine.connect() as connection:
        rows = connection.execute(select(WORKERS).where(WORKERS.c.study_id == study_id)
                                  .order_by(WORKERS.c.number)).mappings().all()
    return [dict(row) for row in rows]
