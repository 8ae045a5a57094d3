"""A worker number per process, registered in the store, so that replicas started with the same
command line (compose `--scale`, a cluster array job) still draw different sampler seeds.

One small table beside Optuna's, `sweeps_workers`: (study_id, number) is its primary key, so two
processes that race for the same number cannot both insert it; the loser takes the next one.
"""

from __future__ import annotations

import datetime
import os
import random
import socket
import time

import optuna
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from storage.optuna_private import engine_of

WORKERS = Table(
    "sweeps_workers", MetaData(),
    Column("study_id", Integer, primary_key=True, autoincrement=False),
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("started_at", DateTime),
)
ATTEMPTS = 50


def register_worker(storage: optuna.storages.BaseStorage, study_id: int) -> int:
    """This process's worker number in the study: 0 for the first process ever to run it, then
    1, 2, ... A store that is not SQL (in-memory, tests) gives 0."""
    engine = engine_of(storage)
    if engine is None:
        return 0
    for attempt in range(ATTEMPTS):
        try:
            with engine.begin() as connection:
                WORKERS.create(connection, checkfirst=True)
                number = connection.execute(
                    select(func.coalesce(func.max(WORKERS.c.number) + 1, 0)).where(WORKERS.c.study_id == study_id)
                ).scalar_one()
                connection.execute(insert(WORKERS).values(
                    study_id=study_id, number=number, host=socket.gethostname()[:255], pid=os.getpid(),
                    started_at=datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None),
                ))
            return int(number)
        except (IntegrityError, ProgrammingError, OperationalError):
            # another worker took the number (or created the table) first: try again
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.01, 0.1))
    raise AssertionError("unreachable")
