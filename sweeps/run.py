"""`python -m sweeps.run STUDY.yaml`: validate, then run (or resume) the sweep.

Exit codes: 0 done, 1 the sweep failed (too many failed trials), 2 the study file is invalid,
3 the store cannot be opened, 130 interrupted by Ctrl-C and 143 by SIGTERM (the running trial is
failed and queued again; rerunning resumes).
"""

from __future__ import annotations

import argparse
import os
import sys

import optuna

from objectives.registry import TaskError
from storage import StorageError, redact
from sweeps import signals
from sweeps.config import load_config
from sweeps.plan import check_plan, format_plan
from sweeps.runner import SweepFailed, finished_count, run_sweep, target_of, training_set_size
from sweeps.schema import ConfigError
from sweeps.workers import run_workers

EXIT_FAILED, EXIT_CONFIG, EXIT_STORAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 3, 130, 143


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sweeps.run",
        description="Search batch size, epochs and LR coupling under a fixed compute budget.",
    )
    parser.add_argument("study_file", help="the study YAML file")
    parser.add_argument("--n-trials", type=int, help="total finished trials for the study")
    parser.add_argument("--storage", help="SQLAlchemy URL (overrides the file and $SWEEPS_STORAGE)")
    parser.add_argument("--study-name", help="study name in the store (overrides the file)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and print the plan; train nothing, touch no store")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--worker-index", type=int, default=0,
                        help="this worker's sampler seed is study.seed + index (default 0); on several "
                             "machines give each its own range, e.g. 0, 4, 8 with --workers 4")
    parser.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)  # a child of --workers
    return parser.parse_args(argv)


def fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.n_trials is not None and args.n_trials < 1:
        return fail(EXIT_CONFIG, f"--n-trials must be >= 1 (got {args.n_trials})")
    if args.workers < 1:
        return fail(EXIT_CONFIG, f"--workers must be >= 1 (got {args.workers})")
    signals.install()
    try:
        config = load_config(args.study_file)
        target = target_of(config, args.storage, args.study_name, args.n_trials)
        if args.dry_run:
            n_train = training_set_size(config)
            check_plan(config, n_train)
            print(format_plan(config, n_train))
            print(f"\nstore: {redact(target.storage_url)} (not opened: dry run)")
            return 0
        if args.workers > 1:
            return run_workers(args.study_file, config, target, args.workers, show_progress=not args.quiet,
                               first_index=args.worker_index)
        study = run_sweep(config, target, show_progress=not args.quiet, worker_index=args.worker_index)
    except ConfigError as err:
        return fail(EXIT_CONFIG, f"{args.study_file}: {err}")
    except TaskError as err:
        return fail(EXIT_CONFIG, f"{args.study_file}: objective.task: {err}")
    except StorageError as err:
        return fail(EXIT_STORAGE, str(err))
    except SweepFailed as err:
        return fail(EXIT_FAILED, str(err))
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "interrupted: the running trial is failed and queued again; "
                                      "run the same command again to resume")
    except signals.Terminated:
        return fail(EXIT_TERMINATED, "terminated: the running trial is failed and queued again; "
                                     "run the same command again to resume")
    except optuna.exceptions.OptunaError as err:
        return fail(EXIT_FAILED, str(err))
    if args.as_worker:  # a worker of --workers: the parent reports
        return 0
    print_summary(study, config.study.metric)
    finished = finished_count(study)
    if finished < target.n_trials:
        why = "the grid has no more points" if config.sampler.name == "grid" else "the sampler stopped the study"
        print(f"note: stopped at {finished} of {target.n_trials} trials: {why}")
    return 0


def print_summary(study: optuna.Study, metric: str) -> None:
    try:
        best = study.best_trial
    except ValueError:
        print("no trial finished with a value")
        return
    attrs = best.user_attrs
    print(
        f"best {metric} = {best.value:.4f} (trial {best.number}): batch_size {attrs.get('batch_size')}, "
        f"lr {attrs.get('lr', float('nan')):.4g} ({attrs.get('coupling')}), "
        f"{attrs.get('epochs_completed')} epochs, {attrs.get('updates')} updates"
    )


if __name__ == "__main__":
    code = main()
    if "--as-worker" in sys.argv:
        # A worker of --workers: everything it wrote is committed; skip the interpreter's teardown
        # (most of a second of CPU with torch loaded), so SIGTERM ends it within the 10 s promised.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
