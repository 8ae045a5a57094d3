"""Throughput of N workers sharing one study on PostgreSQL, relative to one worker.

Each worker is a process running the service's own sweep loop (ask ahead, background
bookkeeping, heartbeat) and storage set-up on a 1-second objective (a sleep: the figure measures
the loop and the shared store, not the cores of this machine) until the study holds `--trials`
finished trials. Workers start together after their imports and set-up (the storage, the
bookkeeping process and its connection, the check for dead workers' trials); the clock runs from
the start signal until the last trial is committed, so process start-up and teardown (one-off
costs per worker) are not in it; every trial's ask, sampling and record are.

The default, 256 trials, is 16 rounds of trials at 16 workers: throughput while the workers run.
With fewer rounds the start weighs more: 16 workers ask for their first trial at the same moment
and queue for 2 cores shared with PostgreSQL, so at 16 workers the last one starts its first
trial about 1 s after the signal, a quarter of a `--trials 64` run (4 rounds). `last start` is
when the last worker started its first trial (seconds after the signal); the load average
printed with each row shows any other load on the machine.

    python benchmarks/scaling.py [--url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--trials 256]

Last line: `scaling_efficiency_16=<x>` (throughput at 16 / (16 x throughput at 1)).

`--store` runs the store side by side, direct and through PgBouncer in transaction mode (issue 29,
docs/many_workers.md), at 1, 4, 16, 32 and 64 workers, with 10-second trials:

    python benchmarks/scaling.py --store [--counts 1,4,16,32,64] [--modes direct,pooled] [--rounds 3] [--serial]

Its worker imports no torch (64 of them fit beside PostgreSQL on a small machine): instead of the
sweep loop, whose trial module imports torch, each worker does per trial what the service asks of
the store, through the service's own store (`storage.snapshot.SnapshotStorage`, the snapshot around
the ask, the sweep loop's heartbeat thread, the bookkeeper's tell): Optuna's ask, the ledger
reservation of `study.total_budget` (SELECT ... FOR UPDATE of the study's budget row, every worker on
the same row), heartbeats every 2 s (`--heartbeat`), the batched write of the trial's records (`storage.batch`), the
settlement, tell, and the search for dead workers' trials (once per heartbeat interval), and it
counts the study's trials in one query, as the sweep loop does; its worker number comes from the
registry (`storage.workers`). It keeps the sweep loop's order: a bookkeeper (a thread here, the
service's is a forked process) runs the store's requests one at a time, marks the trial it starts
(`Books.started`), asks the next trial (with the budget's check, the counts and the sampling) while
the current one runs, and after a trial
records it (write, settlement, tell) and then books the next one, so the time between two trials is
the record and the reservation. `--serial` runs every step between two trials instead (record,
counts, ask, reservation; how this benchmark ran before: a worker that does not ask ahead).
PgBouncer (Debian's package) is started by the benchmark on a free
port, pool size `--pool` (10), and stopped by its pid. Per mode and count it prints the efficiency
(the share of the workers' wall time spent inside trials, from the start signal to the last trial's
end), the PostgreSQL connections held by the run (peak, sampled every 0.25 s in pg_stat_activity by
the run's application_name), the time from a trial's end to the same worker's next trial's start
(median and 95th percentile), `last start` (as above: when the last worker started its first
trial, seconds after the signal), and the CPU time per trial (milliseconds, from the start signal on,
which the load of the machine changes little): the workers' own (`cpu ms`, their heartbeat threads
included), PostgreSQL's server processes' (`pg ms`, read from /proc for a server on this machine)
and PgBouncer's (`pgb ms`). A direct run that PostgreSQL refuses ("too many clients") prints what
happened instead of a row.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing as mp
import os
import time
import uuid

import optuna
from optuna.trial import TrialState

from objectives.training.budget import Budget
from sweeps.config.study_file import parse_config
from sweeps.config.target import SweepTarget

WORKER_COUNTS = (1, 2, 4, 8, 16)


class SleepObjective:
    """Stands in for training: one second per trial, whatever the configuration."""

    budget = Budget("updates", 1, 1)

    def run(self, trial, point, pruner):
        from sweeps.trial.run_one import Outcome

        started = time.time()
        time.sleep(1.0)
        return Outcome(TrialState.COMPLETE, value=(math.log2(point.base_lr) + 5) ** 2 + point.batch_size / 1024,
                       attrs={"worker": os.getpid(), "started": started})


def config_for(name: str, n_trials: int, index: int):
    return parse_config({
        "study": {"name": name, "metric": "val_mse", "direction": "minimize", "n_trials": n_trials, "seed": index},
        "pruner": {"name": "none"},
        "objective": {"task": "regression"},
        "budget": {"unit": "updates", "per_trial": 1},
        "search": {"batch_size": {"low": 16, "high": 1024, "power_of_two": True},
                   "base_lr": {"low": 1e-4, "high": 1.0, "log": True}},
    })


def worker(url: str, name: str, n_trials: int, index: int, ready, done) -> None:
    from sweeps.loop.runner import open_study
    from sweeps.loop.sweep_loop import SweepLoop

    optuna.logging.set_verbosity(logging.WARNING)
    config = config_for(name, n_trials, index)
    study = open_study(config, SweepTarget(url, name, n_trials), n_train=1, sampler_seed=index)
    loop = SweepLoop(study, config, SleepObjective(), 1, n_trials)
    loop.start()  # the bookkeeping process and its connection: set-up, like the storage's
    ready.wait()
    loop.run()
    done.put(time.time())
    done.close()
    done.join_thread()
    # Skip the interpreter's teardown (about 0.6 CPU-seconds with torch loaded): on a small machine a
    # worker that is done would otherwise take CPU from those still running trials. Nothing is lost:
    # every trial is committed before loop.run() returns.
    os._exit(0)


def run(url: str, n_workers: int, n_trials: int) -> tuple[float, int, float]:
    """Seconds from the start signal until the study held its trials; trials finished; seconds from
    the start signal until the last worker started its first trial."""
    from sweeps.loop.runner import open_study

    name = f"scaling-{n_workers}-{uuid.uuid4().hex[:8]}"
    open_study(config_for(name, n_trials, 0), SweepTarget(url, name, n_trials), n_train=1)
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(n_workers + 1)
    done = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(url, name, n_trials, i, ready, done)) for i in range(n_workers)]
    for p in procs:
        p.start()
    ready.wait()
    started = time.time()
    for _ in procs:
        done.get(timeout=600)
    for p in procs:
        p.join()
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    finished = len(trials)
    assert finished == n_trials, f"{finished} trials finished, not {n_trials}"
    # until the study held its last finished trial (workers notice within their 0.5 s poll)
    elapsed = max(t.datetime_complete.timestamp() for t in trials) - started
    first_starts: dict[int, float] = {}
    for t in trials:
        worker_pid, at = t.user_attrs["worker"], t.user_attrs["started"]
        first_starts[worker_pid] = min(at, first_starts.get(worker_pid, at))
    optuna.delete_study(study_name=name, storage=url)
    return elapsed, finished, max(first_starts.values()) - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get("SWEEPS_TEST_POSTGRES_URL",
                                                        "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--trials", type=int, default=256, help="finished trials per run")
    parser.add_argument("--store", action="store_true", help="direct and PgBouncer side by side (no torch)")
    parser.add_argument("--counts", default=",".join(map(str, STORE_COUNTS)), help="--store: worker counts")
    parser.add_argument("--modes", default="direct,pooled", help="--store: direct, pooled or both")
    parser.add_argument("--rounds", type=int, default=3, help="--store: trials per worker")
    parser.add_argument("--pool", type=int, default=10, help="--store: PgBouncer's pool size")
    parser.add_argument("--heartbeat", type=float, default=2.0,
                        help="--store: seconds between a trial's heartbeats and between stale checks (default 2, "
                             "as measured so far; the service's default study.heartbeat_interval is 10)")
    parser.add_argument("--serial", action="store_true",
                        help="--store: no ask ahead; every step between two trials, in order (as before)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    if args.store:
        store_main(args)
        return
    throughput = {}
    print(f"{os.cpu_count()} CPU cores; {args.trials} trials of 1 s per row")
    print(f"{'workers':>7}  {'trials':>6}  {'seconds':>8}  {'trials/s':>8}  {'vs 1 worker':>11}  {'efficiency':>10}  "
          f"{'last start':>10}  {'load avg':>8}")
    for n in WORKER_COUNTS:
        elapsed, done, last_start = run(args.url, n, args.trials)
        throughput[n] = done / elapsed
        speedup = throughput[n] / throughput[1]
        print(f"{n:>7}  {done:>6}  {elapsed:>8.2f}  {throughput[n]:>8.2f}  {speedup:>11.2f}  {speedup / n:>10.2f}  "
              f"{last_start:>10.2f}  {os.getloadavg()[0]:>8.2f}", flush=True)
    print(f"scaling_efficiency_16={throughput[16] / (16 * throughput[1]):.3f}")



# --- --store: the direct path and PgBouncer side by side (issue 29) ---------------------------------

STORE_COUNTS = (1, 4, 16, 32, 64)
TRIAL_S = 10.0
RECORD = {f"attr_{i}": i * 0.5 for i in range(16)}  # about what a sweep trial records besides its curve


def store_worker(url: str, name: str, n_trials: int, budget_amount: float, ready, done,
                 ask_ahead: bool = True, heartbeat_s: float = 2.0) -> None:
    """One worker: the store's work of a sweep trial, around a 10-second sleep (no torch), through the
    service's own store (`SnapshotStorage`, its snapshot around the ask, its heartbeat thread and its
    tell) in the order of the service's sweep loop (`sweeps.loop.sweep_loop`, `sweeps.loop.bookkeeping`):
    its bookkeeper runs the requests one at a time, in order, beside the trial; the next trial is
    asked (and sampled) while the current one runs, and after a trial the next trial's reservation is
    queued ahead of its record (with `study.total_budget`, as the sweep loop does: the next trial
    starts without waiting for the last one's record). The bookkeeper is a thread here, not the
    service's forked process (whose module imports torch): a sleeping trial holds no GIL. `ask_ahead`
    False: every step between two trials, in order (record, count, ask, reservation), as this
    benchmark measured before."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from storage import ledger
    from storage.batch import count_running, count_trials, mark_running_trial, write_trial_batch
    from storage.heartbeats import fail_stale_trials
    from storage.optuna_private import engine_of, enter_optimize_loop, tell
    from storage.snapshot import SnapshotStorage, snapshot
    from storage.sql import open_storage
    from storage.workers import register_worker
    from sweeps.loop.heartbeat import Heartbeat
    from sweeps.loop.slots import others_wanting_a_slot
    from sweeps.trial.record import STARTED_KEY

    optuna.logging.set_verbosity(logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    try:
        storage = SnapshotStorage(open_storage(url, heartbeat_interval=heartbeat_s, grace_period=30))
        study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
        study_id = study._study_id
        engine = engine_of(storage)
        number = register_worker(storage, study_id)
        heartbeat = Heartbeat(study)  # the sweep loop's heartbeat thread, every `heartbeat_s`
        heartbeat.start()
        book = ThreadPoolExecutor(max_workers=1)  # the bookkeeper: one request at a time, in order
        book.submit(enter_optimize_loop, study).result()  # as the bookkeeper's thread does
        taken_states = (TrialState.COMPLETE, TrialState.RUNNING)
        mine: set[int] = set()
        started_here: set[int] = set()
        owed: list[int] = []  # `Books.owed_retries`
        next_stale_check = [0.0]

        def ask(wait: bool):
            """`Books.ask`: None when the study has its trials, or (not `wait`) when asking ahead would
            hold one of the last slots while another worker idles."""
            left = ledger.left(engine, study_id)  # the budget's check before every ask
            if left is not None and left + ledger.SLACK * budget_amount < 1.0:
                return None
            if time.monotonic() >= next_stale_check[0]:  # once per heartbeat interval
                fail_stale_trials(study, owed)
                next_stale_check[0] = time.monotonic() + heartbeat_s
            # one COUNT query, as the sweep loop asks (storage.batch.count_trials), not every trial read back
            taken = count_trials(storage, study_id, taken_states)
            free = n_trials - taken
            if free <= 0 or not (wait or free > taken or free > others_wanting()):
                return None
            with snapshot(storage):  # as the bookkeeper asks and samples
                trial = study.ask()
                heartbeat.add(trial._trial_id)
                if trial.number >= n_trials and count_trials(storage, study_id, taken_states,  # raced for the last
                                                             trial.number) >= n_trials:
                    write_trial_batch(storage, trial._trial_id, {"worker": number, "error": "not started"}, {})
                    tell(study, trial, state=TrialState.FAIL, skip_if_finished=True)
                    heartbeat.discard(trial._trial_id)
                    return None
                x = trial.suggest_float("x", -1.0, 1.0)
            mine.add(trial._trial_id)
            return trial, x

        def others_wanting() -> int:  # `Books.others_wanting_a_slot`
            running, training = count_running(storage, study_id, STARTED_KEY)
            return others_wanting_a_slot(running, training, len(mine), len(mine & started_here))

        def mark_started(trial) -> None:  # `Books.started`
            started_here.add(trial._trial_id)
            mark_running_trial(storage, trial._trial_id, STARTED_KEY)

        def reserve(trial, tentative: bool = False) -> bool | None:
            if ledger.reserve(engine, study_id, trial._trial_id, 1.0).granted:
                return True
            if tentative:  # booked ahead of this worker's last record, whose settlement may give some back
                return None
            tell(study, trial, state=TrialState.FAIL)
            heartbeat.discard(trial._trial_id)
            mine.discard(trial._trial_id)
            return False

        def finish(trial, x: float, started: float, ended: float) -> None:
            write_trial_batch(storage, trial._trial_id, {**RECORD, "worker": number, "started": started,
                                                          "ended": ended}, {i: x * i for i in range(10)})
            ledger.settle(engine, study_id, trial._trial_id, 1.0)
            tell(study, trial, x * x)
            heartbeat.discard(trial._trial_id)
            mine.discard(trial._trial_id)

        # the bookkeeper's start (`Books.start_bookkeeping`): dead workers' trials failed before the first ask
        book.submit(fail_stale_trials, study, owed).result()
        next_stale_check[0] = time.monotonic() + heartbeat_s
        ready.wait()
        cpu_started = time.process_time()
        spans, finishing = [], []
        next_ask = book.submit(ask, not ask_ahead)
        trained = None  # asking ahead: a trial's record is queued behind the next trial's reservation
        while True:
            asked = next_ask.result()
            if asked is None:  # not asked ahead: ask again now that this worker is free
                if trained is not None:
                    finishing.append(book.submit(finish, *trained))
                    trained = None
                asked = book.submit(ask, True).result()
                if asked is None:
                    break
            trial, x = asked
            booking = book.submit(reserve, trial, trained is not None)
            if trained is not None:
                finishing.append(book.submit(finish, *trained))
                trained = None
            granted = booking.result()
            if granted is None:  # it may fit once the last trial has settled
                finishing[-1].result()
                granted = book.submit(reserve, trial).result()
            if not granted:
                break
            book.submit(mark_started, trial)  # ahead of the next ask, which counts the others' trials in training
            if ask_ahead:
                next_ask = book.submit(ask, False)
            started = time.time()
            time.sleep(TRIAL_S)
            ended = time.time()
            spans.append((started, ended))
            if ask_ahead:
                trained = (trial, x, started, ended)
            else:
                book.submit(finish, trial, x, started, ended).result()
                next_ask = book.submit(ask, True)
        for recorded in finishing:
            recorded.result()
        book.shutdown()
        cpu = time.process_time() - cpu_started
        heartbeat.stop()
        done.put(("ok", number, spans, cpu))
    except Exception as err:  # noqa: BLE001 - the run reports what the store did
        ready.abort()  # the others do not wait for this one at the start signal
        done.put(("error", f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}", [], 0.0))
    done.close()
    done.join_thread()
    os._exit(0)


def cpu_seconds(pid: int, command: str) -> float | None:
    """User and system CPU seconds of a process of this machine running `command` (None otherwise)."""
    try:
        with open(f"/proc/{pid}/comm") as comm:
            if comm.read().strip() != command:
                return None
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def count_connections(direct_url: str, application_name: str, stop, peak: list[int], started,
                      server_cpu: dict) -> None:
    """The peak of the run's server connections, and the CPU their PostgreSQL processes spent after the
    start signal (`server_cpu`: pid -> [at the signal, last seen]; a server on this machine only)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(direct_url, poolclass=NullPool)
    query = sqlalchemy.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name")
    while not stop.is_set():
        try:
            with engine.connect() as connection:  # one connection of its own, held for the run (not counted)
                while not stop.wait(0.25):
                    pids = connection.execute(query, {"name": application_name}).scalars().all()
                    connection.rollback()
                    peak[0] = max(peak[0], len(pids))
                    for pid in pids:
                        cpu = cpu_seconds(pid, "postgres")
                        if cpu is not None:
                            # a server process that was there at the signal counts from then, a new one from its start
                            base = cpu if not started.is_set() else server_cpu.get(pid, [0.0])[0]
                            server_cpu[pid] = [base, cpu]
        except sqlalchemy.exc.SQLAlchemyError:  # the server went away for a while: count again once it is back
            stop.wait(1.0)
    engine.dispose()


def store_run(url: str, direct_url: str, application_name: str, n_workers: int, rounds: int,
              pooler_pid: int | None = None, ask_ahead: bool = True, heartbeat_s: float = 2.0) -> dict:
    import statistics
    import threading

    from storage import ledger
    from storage.optuna_private import engine_of
    from storage.sql import open_storage

    name = f"scaling-store-{n_workers}-{uuid.uuid4().hex[:8]}"
    n_trials = n_workers * rounds
    setup = open_storage(direct_url)
    study = optuna.create_study(study_name=name, storage=setup)
    amount = float(n_trials)  # exactly the trials asked for: the ledger must hold, never exceed, it
    ledger.set_total(engine_of(setup), study._study_id, name, amount, "trials")
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(n_workers + 1)
    done = ctx.Queue()
    procs = [ctx.Process(target=store_worker, args=(url, name, n_trials, amount, ready, done, ask_ahead, heartbeat_s))
             for _ in range(n_workers)]
    for p in procs:
        p.start()
    stop, peak, signalled, server_cpu = threading.Event(), [0], threading.Event(), {}
    counter = threading.Thread(target=count_connections,
                               args=(direct_url, application_name, stop, peak, signalled, server_cpu))
    counter.start()
    try:
        ready.wait(timeout=600)
    except Exception:  # noqa: BLE001 - a worker died before the signal (it reported why)
        pass
    started = time.time()
    signalled.set()
    pooler_cpu = None if pooler_pid is None else cpu_seconds(pooler_pid, "pgbouncer")
    results = [done.get(timeout=900) for _ in procs]
    if pooler_cpu is not None:
        pooler_cpu = (cpu_seconds(pooler_pid, "pgbouncer") or pooler_cpu) - pooler_cpu
    for p in procs:
        p.join()
    stop.set()
    counter.join()
    errors = [r[1] for r in results if r[0] == "error"]
    spans = [span for r in results if r[0] == "ok" for span in r[2]]
    numbers = [r[1] for r in results if r[0] == "ok"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    state = ledger.read(engine_of(setup), study._study_id)
    optuna.delete_study(study_name=name, storage=setup)
    setup.engine.dispose()
    row = {"workers": n_workers, "trials": len(trials), "errors": errors, "connections": peak[0],
           "distinct": len(set(numbers)) == len(numbers), "spent": state.spent if state else None,
           "amount": amount}
    if not spans:
        return row
    end = max(e for _, e in spans)
    busy = sum(e - s for s, e in spans)
    row["efficiency"] = busy / (n_workers * (end - started))
    row["cpu_ms"] = 1000 * sum(r[3] for r in results if r[0] == "ok") / len(spans)
    if server_cpu:
        row["server_ms"] = 1000 * sum(last - base for base, last in server_cpu.values()) / len(spans)
    if pooler_cpu is not None:
        row["pooler_ms"] = 1000 * pooler_cpu / len(spans)
    by_worker: dict[int, list] = {}
    for r in results:
        if r[0] == "ok":
            by_worker[r[1]] = sorted(r[2])
    gaps = [b[0] - a[1] for runs in by_worker.values() for a, b in zip(runs, runs[1:])]
    firsts = sorted(runs[0][0] - started for runs in by_worker.values() if runs)
    row["first_start"] = firsts[-1] if firsts else float("nan")
    if gaps:
        gaps.sort()
        row["gap_median"] = statistics.median(gaps)
        row["gap_p95"] = gaps[min(len(gaps) - 1, int(0.95 * len(gaps)))]
    return row


def store_main(args) -> None:
    import sys
    from pathlib import Path

    from sqlalchemy.engine import make_url

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/pgbouncer.py starts PgBouncer
    from tests.pgbouncer import PgBouncer

    counts = [int(c) for c in args.counts.split(",")]
    modes = args.modes.split(",")
    order = "no ask ahead (--serial)" if args.serial else "asked ahead, as the service"
    print(f"{os.cpu_count()} CPU cores; trials of {TRIAL_S:.0f} s, {args.rounds} per worker; heartbeats every "
          f"{args.heartbeat:g} s; PgBouncer pool {args.pool}, transaction mode; {order}")
    print(f"{'mode':>6}  {'workers':>7}  {'trials':>6}  {'efficiency':>10}  {'pg conns':>8}  {'gap med s':>9}  "
          f"{'gap p95 s':>9}  {'last start':>10}  {'ledger':>9}  {'cpu ms':>6}  {'pg ms':>5}  {'pgb ms':>6}  "
          f"{'load avg':>8}")
    for n in counts:
        for mode in modes:
            if mode == "pooled":
                pooler = PgBouncer(args.url, pool_size=args.pool)
                pooler.start()
                url, application_name = pooler.url, pooler.application_name
            else:
                pooler = None
                application_name = f"sweeps-direct-{uuid.uuid4().hex[:6]}"
                url = make_url(args.url).update_query_dict({"application_name": application_name}) \
                    .render_as_string(hide_password=False)
            try:
                row = store_run(url, args.url, application_name, n, args.rounds,
                                pooler.process.pid if pooler is not None else None, not args.serial, args.heartbeat)
            finally:
                if pooler is not None:
                    pooler.close()
            spent = f"{row['spent']:.0f}/{row['amount']:.0f}" if row["spent"] is not None else "-"
            if "efficiency" in row:
                gaps = (f"{row.get('gap_median', float('nan')):>9.3f}  {row.get('gap_p95', float('nan')):>9.3f}  "
                        f"{row['first_start']:>10.2f}")
                server = f"{row['server_ms']:>5.1f}" if "server_ms" in row else f"{'-':>5}"
                server += f"  {row['pooler_ms']:>6.1f}" if "pooler_ms" in row else f"  {'-':>6}"
                print(f"{mode:>6}  {n:>7}  {row['trials']:>6}  {row['efficiency']:>10.3f}  {row['connections']:>8}  "
                      f"{gaps}  {spent:>9}  {row['cpu_ms']:>6.1f}  {server}  {os.getloadavg()[0]:>8.2f}", flush=True)
            if row["errors"]:
                print(f"{mode:>6}  {n:>7}  {len(row['errors'])} of {n} workers failed: {row['errors'][0]}", flush=True)
            assert row["distinct"], "two workers got the same number"
            assert row["spent"] is None or row["spent"] <= row["amount"] + 1e-6, "the ledger was exceeded"


if __name__ == "__main__":
    main()
