"""`sweeps studies [STUDY.yaml] [--storage URL]`: the studies in a store, one line each.

The store is found as every command finds it: with a study file, --storage, then $SWEEPS_STORAGE,
then study.storage, then `<study name>.db` beside the file; without one, --storage or
$SWEEPS_STORAGE (a relative SQLite path is then taken from the working directory). Each line
counts the study's complete, pruned, failed and running trials, its best value and its last
activity (the latest trial start or end); when a study of the store has a `study.total_budget`,
its ledger too: spent of the total, left, and the rate across all workers. Read-only: no table
is created and a SQLite file is opened read-only, so a store that is not there is an error, not a
new empty file. With --workers, each study's registered workers follow the table, one line each:
its number (sampler seed study.seed + number), host (and Slurm job: `vm [slurm 12_3]`), process
id, when it started, and the trials it finished and failed (from each trial's `worker`).
`--format json` prints the same facts as one JSON document instead: `store`, and `studies`, one
object each with `study`, `direction`, the counts, `best` (the full value, null without one),
`total_budget` (`amount`, `unit`, `spent`, `left`, `rate`, `open`; null without a ledger),
`last_activity` and, with --workers, `workers` (their start in UTC).
A study deleted while the listing reads it (another process ran `optuna delete-study`) is left out.
Exit codes (`sweeps.exits`): 0 listed, 2 no store named or an invalid study file or URL,
3 store not there or not readable.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import datetime, timezone
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from storage import StorageError, StorageUsageError, ledger, redact
from storage.ledger import LedgerState
from storage.optuna_private import study_id_of
from storage.sql import ENV_VAR, open_read_only, resolve_url
from storage.workers import registered_workers
from sweeps import exits
from sweeps.budget.ledger_view import columns
from sweeps.cli import JSON, add_format_argument, run_command
from sweeps.text import emit_json, indented, table, timestamp
from sweeps.trial.record import TrialRecord

EXAMPLE = """examples:
  sweeps studies study.yaml                      # the store the study file names
  sweeps studies --storage sqlite:///tiny.db
  sweeps studies study.yaml --workers            # and each study's workers (hosts, Slurm tasks)
  SWEEPS_STORAGE=postgresql+psycopg://USER@HOST:5432/DB sweeps studies
  sweeps studies study.yaml --format json        # the same facts as one JSON document
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sweeps studies", description="List the studies in a store: trials "
                                     "complete, pruned and failed, best value, last activity.",
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_file", nargs="?", help="a study YAML file whose store to list (optional)")
    parser.add_argument("--storage", help=f"SQLAlchemy URL of the store (wins over ${ENV_VAR}, then the study "
                                          "file's study.storage, then <study name>.db beside the file)")
    parser.add_argument("--workers", action="store_true",
                        help="also list each study's registered workers: number, host (and Slurm job), pid, "
                             "start, trials finished and failed")
    add_format_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: list_studies(args), args.study_file or "sweeps studies")


def store_url(args: argparse.Namespace) -> str:
    if args.study_file:
        from sweeps.config.study_file import load_config
        from sweeps.config.target import target_of

        config = load_config(args.study_file)
        return target_of(config, args.storage).storage_url
    if not (args.storage or os.environ.get(ENV_VAR, "").strip()):
        raise StorageUsageError(f"no store named: pass a study file, --storage URL or set ${ENV_VAR}")
    return resolve_url(args.storage, None, os.getcwd(), "studies")


def trial_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """The trials by state, as `sweeps studies` and `sweeps best --format json` count them (waiting ones
    count as running)."""
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    return {"complete": count[TrialState.COMPLETE], "pruned": count[TrialState.PRUNED],
            "failed": count[TrialState.FAIL], "running": count[TrialState.RUNNING] + count[TrialState.WAITING]}


def facts(study, trials: list[FrozenTrial], state: LedgerState | None) -> dict[str, Any]:
    """What `sweeps studies` knows of one study, as `--format json` prints it; `state`: its ledger."""
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.values and len(t.values) == 1
              and t.value is not None and math.isfinite(t.value)]
    best = None
    if values and len(study.directions) == 1:
        best = max(values) if study.directions[0] == StudyDirection.MAXIMIZE else min(values)
    times = [d for t in trials for d in (t.datetime_complete, t.datetime_start) if isinstance(d, datetime)]
    return {"study": study.study_name, "direction": "/".join(d.name.lower() for d in study.directions),
            **trial_counts(trials), "best": best, "total_budget": None if state is None else ledger_facts(state),
            "last_activity": max(times) if times else None}


def ledger_facts(state: LedgerState) -> dict[str, Any]:
    return {"amount": state.amount, "unit": state.unit, "spent": state.spent, "left": state.left,
            "rate": state.rate, "open": state.open}


def summary(study: dict[str, Any], state: LedgerState | None, with_ledger: bool) -> dict[str, Any]:
    """A study's row of the table, from its `facts`; the ledger columns when any study has a ledger."""
    return {**{key: study[key] for key in ("study", "direction", "complete", "pruned", "failed", "running")},
            "best": "-" if study["best"] is None else f"{study['best']:.6g}",
            **(columns(state) if with_ledger else {}),
            "last activity": timestamp(study["last_activity"])}


def local_time(utc: datetime | None) -> str:
    if not isinstance(utc, datetime):
        return "-"
    return timestamp(utc.replace(tzinfo=timezone.utc).astimezone())


def worker_facts(engine, study_id: int, trials: list[FrozenTrial], host_has: str = "") -> list[dict[str, Any]]:
    """Each registered worker of the study (those whose host contains `host_has`), with the trials it
    finished and failed, from `trials` (the study's); times in UTC."""
    found = []
    for worker in registered_workers(engine, study_id):
        if host_has not in (worker["host"] or ""):
            continue
        own = [t for t in trials if TrialRecord.of(t).worker == worker["number"]]
        finished = [t for t in own if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        started = worker["started_at"]
        found.append({"worker": worker["number"], "host": worker["host"], "pid": worker["pid"],
                      "started": started.replace(tzinfo=timezone.utc) if isinstance(started, datetime) else None,
                      "finished": len(finished), "failed": sum(t.state == TrialState.FAIL for t in own),
                      "last_finished": max((t.datetime_complete for t in finished if t.datetime_complete),
                                           default=None)})
    return found


def worker_row(worker: dict[str, Any]) -> dict[str, Any]:
    """A worker's row of the workers' table, from its `worker_facts`."""
    return {"worker": worker["worker"], "host": worker["host"] or "-", "pid": worker["pid"] or "-",
            "started": local_time(worker["started"]), "finished": worker["finished"], "failed": worker["failed"],
            "last finished": timestamp(worker["last_finished"])}


def worker_rows(engine, study_id: int, trials: list[FrozenTrial], host_has: str = "") -> list[dict]:
    """One row of the workers' table per registered worker whose host contains `host_has`."""
    return [worker_row(w) for w in worker_facts(engine, study_id, trials, host_has)]


def read_studies(storage, with_workers: bool) -> tuple[list, dict, list[dict[str, Any]], dict[str, list]]:
    """The store's studies by name, their ledgers by study id, their `facts` and (`with_workers`) their
    `worker_facts` by name. A study deleted after the store listed it (another process ran
    `optuna delete-study`) is left out: the listing is a snapshot of the studies there, not a lock."""
    studies, states, found, workers = [], {}, [], {}
    for study in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        study_id = study_id_of(study)
        try:
            trials = storage.get_all_trials(study_id, deepcopy=False)
        except KeyError:  # Optuna's "Record does not exist.": gone since the listing, unless it is still there
            if still_there(storage, study.study_name):
                raise
            continue
        states[study_id] = ledger.read(storage.engine, study_id)
        studies.append(study)
        found.append(facts(study, trials, states[study_id]))
        if with_workers:
            workers[study.study_name] = worker_facts(storage.engine, study_id, trials)
    return studies, states, found, workers


def still_there(storage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def list_studies(args: argparse.Namespace) -> int:
    url = store_url(args)
    storage = open_read_only(url)
    try:
        studies, states, found, workers = read_studies(storage, args.workers)
    except StorageError:
        raise
    except Exception as err:  # not an Optuna store, a file that is not a database, a server that went away
        raise StorageError(f"cannot read storage {redact(url)}: {type(err).__name__}: "
                           f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from err
    finally:
        storage.engine.dispose()
    if args.format == JSON:
        emit_json({"store": redact(url),
                   "studies": [{**f, **({"workers": workers[f["study"]]} if args.workers else {})} for f in found]})
        return exits.OK
    print(f"store: {redact(url)}")
    if not found:
        print("no studies")
        return exits.OK
    with_ledger = any(states.values())
    print(table([summary(f, states[study_id_of(s)], with_ledger) for f, s in zip(found, studies)], left=("study",)))
    for name, listed in workers.items():
        print(f"\nworkers of {name}: " + ("none registered" if not listed else str(len(listed))))
        if listed:
            print(workers_table([worker_row(w) for w in listed]))
    return exits.OK


def workers_table(rows: list[dict]) -> str:
    return indented(table(rows, left=("worker", "host")))


if __name__ == "__main__":
    sys.exit(main())
