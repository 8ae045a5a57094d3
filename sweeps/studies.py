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
Exit codes (`sweeps.exits`): 0 listed, 2 no store named or an invalid study file or URL,
3 store not there or not readable.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import datetime, timezone

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from storage import StorageError, StorageUsageError, ledger, redact
from storage.optuna_private import study_id_of
from storage.sql import ENV_VAR, open_read_only, resolve_url
from storage.workers import registered_workers
from sweeps import exits
from sweeps.budget.ledger_view import columns
from sweeps.cli import run_command

EXAMPLE = """examples:
  sweeps studies study.yaml                      # the store the study file names
  sweeps studies --storage sqlite:///tiny.db
  sweeps studies study.yaml --workers            # and each study's workers (hosts, Slurm tasks)
  SWEEPS_STORAGE=postgresql+psycopg://USER@HOST:5432/DB sweeps studies
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


def summary(storage, study, states: dict) -> dict:
    """`states`: each study's ledger by study id; the ledger columns are shown when any has one."""
    trials = storage.get_all_trials(study_id_of(study), deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.values and len(t.values) == 1
              and t.value is not None and math.isfinite(t.value)]
    best = None
    if values and len(study.directions) == 1:
        best = max(values) if study.directions[0] == StudyDirection.MAXIMIZE else min(values)
    times = [d for t in trials for d in (t.datetime_complete, t.datetime_start) if isinstance(d, datetime)]
    direction = "/".join(d.name.lower() for d in study.directions)
    return {"study": study.study_name, "direction": direction, "complete": count[TrialState.COMPLETE],
            "pruned": count[TrialState.PRUNED], "failed": count[TrialState.FAIL],
            "running": count[TrialState.RUNNING] + count[TrialState.WAITING],
            "best": "-" if best is None else f"{best:.6g}",
            **(columns(states.get(study_id_of(study))) if any(states.values()) else {}),
            "last activity": max(times).strftime("%Y-%m-%d %H:%M:%S") if times else "-"}


def table(rows: list[dict], left: tuple[str, ...] = ()) -> str:
    """Aligned columns: the first and those named in `left` to the left, the others to the right."""
    columns = list(rows[0])
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 or columns[i] in left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(columns), *(line(row) for row in cells)]).rstrip()


def local_time(utc: datetime | None) -> str:
    if not isinstance(utc, datetime):
        return "-"
    return utc.replace(tzinfo=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def worker_rows(engine, study_id: int, trials: list[FrozenTrial], host_has: str = "") -> list[dict]:
    """One row per registered worker of the study (those whose host contains `host_has`), with
    the trials it finished and failed, from `trials` (the study's)."""
    rows = []
    for worker in registered_workers(engine, study_id):
        if host_has not in (worker["host"] or ""):
            continue
        own = [t for t in trials if t.user_attrs.get("worker") == worker["number"]]
        finished = [t for t in own if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        last = max((t.datetime_complete for t in finished if t.datetime_complete), default=None)
        rows.append({"worker": worker["number"], "host": worker["host"] or "-", "pid": worker["pid"] or "-",
                     "started": local_time(worker["started_at"]), "finished": len(finished),
                     "failed": sum(t.state == TrialState.FAIL for t in own),
                     "last finished": last.strftime("%Y-%m-%d %H:%M:%S") if last else "-"})
    return rows


def list_studies(args: argparse.Namespace) -> int:
    url = store_url(args)
    storage = open_read_only(url)
    try:
        studies = sorted(storage.get_all_studies(), key=lambda s: s.study_name)
        states = {study_id_of(s): ledger.read(storage.engine, study_id_of(s)) for s in studies}
        rows = [summary(storage, s, states) for s in studies]
        workers = ({s.study_name: worker_rows(storage.engine, study_id_of(s),
                                              storage.get_all_trials(study_id_of(s), deepcopy=False))
                    for s in studies} if args.workers else {})
    except StorageError:
        raise
    except Exception as err:  # not an Optuna store, a file that is not a database, a server that went away
        raise StorageError(f"cannot read storage {redact(url)}: {type(err).__name__}: "
                           f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from err
    finally:
        storage.engine.dispose()
    print(f"store: {redact(url)}")
    if not rows:
        print("no studies")
        return exits.OK
    print(table(rows))
    for name, listed in workers.items():
        print(f"\nworkers of {name}: " + ("none registered" if not listed else str(len(listed))))
        if listed:
            print(workers_table(listed))
    return exits.OK


def workers_table(rows: list[dict]) -> str:
    return "\n".join("  " + line for line in table(rows, left=("host",)).splitlines())


if __name__ == "__main__":
    sys.exit(main())
