"""`python -m sweeps.run STUDY.yaml`: validate, then run (or resume) the sweep.

Exit codes: the table in `sweeps.exits` (0 done, 1 the sweep did not deliver, 2 usage, 3 the
store cannot be opened, 130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import torch

from storage import redact
from sweeps import exits
from sweeps.cli import add_override_argument, add_study_arguments, fail, run_command
from sweeps.config.gpus import GPU_ENV, check_device, cuda_device_count, plan_gpus
from sweeps.config.locations import checkpoint_folder, checkpoint_notice, report_folder
from sweeps.config.plan import check_plan, format_plan
from sweeps.config.study_file import load_config
from sweeps.config.target import target_of
from sweeps.errors import LogFileError
from sweeps.loop import logs, signals
from sweeps.loop.ending import end_sweep
from sweeps.loop.runner import load_task, recorded_overrides, run_sweep
from sweeps.loop.workers import run_workers
from sweeps.results.resume import ALLOW_CHANGES_FLAG, NEW_STUDY_FLAG


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sweeps run",
        description="Search batch size, epochs and LR coupling under a fixed compute budget.",
        epilog="example:\n  sweeps run study.yaml --dry-run    # validate and print the plan\n"
               "  sweeps run study.yaml --workers 2  # run (or resume) with two worker processes\n"
               "  sweeps run study.yaml --new-study digits-2  # the search changed: a new study, same store\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_study_arguments(parser)
    parser.add_argument("--n-trials", type=int, help="total finished trials for the study")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and print the plan; train nothing, touch no store")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument("--log-file", metavar="PATH",
                        help="append the full log to PATH: a line per finished trial, waits for other workers, "
                             "each failed trial's full traceback (the terminal shows it in one line); the workers "
                             "of --workers append to the same file, each line with its process id")
    parser.add_argument("--workers", type=int, help="worker processes on this machine (default 1; with --gpus, "
                                                    "GPUs x --trials-per-gpu, and any other count is an error)")
    parser.add_argument("--gpus", help="one GPU per worker: 'all' or indexes as nvidia-smi numbers them, e.g. 0,2,3; "
                                       "each worker sees only its own (default $SWEEPS_GPUS)")
    parser.add_argument("--trials-per-gpu", type=int,
                        help="workers sharing each GPU with --gpus (default 1); see objective.gpu_memory_fraction")
    parser.add_argument("--worker-index", type=int, default=None,
                        help="fix this worker's sampler seed to study.seed + index (by default each worker "
                             "process registers in the store and takes the next free number)")
    add_override_argument(parser, "recorded with the study and passed on to --workers")
    changed = parser.add_mutually_exclusive_group()
    changed.add_argument(NEW_STUDY_FLAG, metavar="NAME", dest="new_study",
                         help="run the study file as a new study NAME in the same store (when the stored "
                              "study searched something else)")
    changed.add_argument(ALLOW_CHANGES_FLAG, action="store_true", dest="allow_changes",
                         help="carry on with a study file whose search differs from the stored study's; "
                              "the change is recorded in the study's fingerprint_history")
    parser.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)  # a child of --workers
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.n_trials is not None and args.n_trials < 1:
        return fail(exits.USAGE, f"--n-trials must be >= 1 (got {args.n_trials})")
    if args.workers is not None and args.workers < 1:
        return fail(exits.USAGE, f"--workers must be >= 1 (got {args.workers})")
    if args.as_worker and os.environ.get(GPU_ENV) and not cuda_device_count():  # an index the machine lacks
        return fail(exits.USAGE, f"the worker for GPU {os.environ[GPU_ENV]} sees no CUDA device; "
                                 "check the index with nvidia-smi")
    try:
        logs.configure(args.log_file)
    except LogFileError as err:
        return fail(err.code, str(err))
    signals.install()
    return run_command(lambda: sweep(args), args.study_file)


def sweep(args: argparse.Namespace) -> int:
    # a worker child ignores --gpus and $SWEEPS_GPUS: its parent chose its GPU
    gpus = None if args.as_worker else plan_gpus(args.gpus, args.trials_per_gpu, args.workers, args.worker_index,
                                                  cuda_device_count, os.environ, args.dry_run)
    config = load_config(args.study_file, overrides=args.sets)
    target = target_of(config, args.storage, args.study_name, args.n_trials)
    if args.new_study:  # the same store, found as before; only the study's name is new
        target = replace(target, study_name=args.new_study)
    changes = "allow" if args.allow_changes else "check"
    if gpus:
        check_device(config.objective.device)
    task = load_task(config, torch.device("cpu") if gpus else None)  # once, before any store is opened
    check_plan(config, task.n_train, task.tokens_per_example)  # a tokens budget needs the task's tokens
    if args.dry_run:
        print(format_plan(config, task.n_train, task.tokens_per_example))
        if args.sets:
            print("\noverrides: " + " ".join(f"--set {s}" for s in recorded_overrides(args.sets)))
        print(f"\nstore: {redact(target.storage_url)} (not opened: dry run)")
        print(outputs_lines(config, target))
        if gpus:
            print("GPUs (each worker sees only its own; numbered as nvidia-smi numbers them):")
            print("\n".join(f"  {a}" for a in gpus))
        return exits.OK
    if not args.as_worker and (notice := checkpoint_notice(config, target.storage_url, target.study_name)):
        print(notice)  # a server store's checkpoint folder: said once, by the parent
    if gpus or (args.workers or 1) > 1:  # --gpus: always children, so CUDA_VISIBLE_DEVICES precedes CUDA
        return run_workers(args.study_file, config, target, len(gpus) if gpus else args.workers, task.n_train,
                           show_progress=not args.quiet, first_index=args.worker_index, gpus=gpus,
                           overrides=args.sets, log_file=args.log_file, changes=changes)
    study = run_sweep(config, target, show_progress=not args.quiet, worker_index=args.worker_index, task=task,
                      overrides=args.sets, changes=changes, is_worker=args.as_worker)
    if args.as_worker:  # a worker of --workers: the parent reports
        return exits.OK
    return end_sweep(study, target.n_trials, config)


def outputs_lines(config, target) -> str:
    """Where the sweep keeps its checkpoints and where `sweeps report` writes by default."""
    url, name = target.storage_url, target.study_name
    checkpoints = checkpoint_notice(config, url, name) or (
        f"checkpoints: {checkpoint_folder(config, url, name).path}" if config.dashboard.keep_checkpoints > 0
        else "checkpoints: none (dashboard.keep_checkpoints: 0)")
    return f"{checkpoints}\nreport: {report_folder(config, url, name, None)} (sweeps report --out DIR to choose)"


def exit_at_once_if_stopped(code: int, argv: list[str]) -> None:
    """A worker of --workers, or a stopped sweep: everything it wrote is committed, so skip the
    interpreter's teardown (seconds of CPU with torch loaded on a busy machine), and SIGTERM
    (docker stop) ends it well within the grace period."""
    if "--as-worker" in argv or code in (exits.INTERRUPTED, exits.TERMINATED):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    code = main()
    exit_at_once_if_stopped(code, sys.argv[1:])
    sys.exit(code)
