"""`sweeps confirm STUDY.yaml --top 3 --seeds 3`: train the best configurations again with fresh
seeds, and say how far the search's values overstated them.

The search's best value is the best of many noisy draws. This command queues `--seeds` runs of
each of the `--top` best complete trials (their parameters, so the same coupling, budget and
schedule, with a fresh training seed each) in the companion study `<name>-confirm` of the same
store (sweeps/confirmation/companion.py), runs them through the ordinary sweep loop (`--workers N`, or
the same command on other machines with the same store), and prints each configuration's
search-time value, the mean and standard deviation of its confirmed values, and how far the
search value overstated the mean. Rerunning resumes: finished runs are kept, failed ones queued
again.
The runs count against the main study's `study.total_budget` (its ledger; the study file's amount
is recorded first, as `sweeps run` records it): the runs are taken best configuration first, and
the first that does not fit what is left, with every run after it, is not started. As when
`sweeps run` finds its budget spent, that ends in 0 with a `note:` line when the runs that fitted
finished, and in 1 with one `error:` line when not even the first run fits.
Exit codes (`sweeps.exits`): 0 every run that fits the total budget finished, 1 no complete trial
to confirm, no run fits the total budget, or a run did not finish (rerun to resume), 2 invalid
study file or flag, 3 store not there or not readable, 4 no such study, 130/143 interrupted
(rerun to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys

import optuna

from storage.ledger import LedgerState
from sweeps import exits
from sweeps.best import ranked
from sweeps.budget.ledger_view import not_started_message, state_of
from sweeps.budget.spending import Pace, Spending
from sweeps.cli import add_override_argument, add_study_arguments, fail, run_command
from sweeps.config.plan import budget_of
from sweeps.config.study_file import SweepConfig
from sweeps.config.target import SweepTarget
from sweeps.confirmation.companion import (
    FINISHED,
    BudgetCheck,
    Confirmation,
    companion_config,
    companion_target,
    link,
    planned,
    queue_missing,
    runs_to_make,
    split_by_budget,
)
from sweeps.confirmation.confirmed import companion_of, confirmed, ranking_note, runs_text
from sweeps.loop import signals
from sweeps.loop.runner import LoadedTask, load_task, open_ledger, open_study, run_sweep
from sweeps.loop.workers import start_and_wait
from sweeps.publish.notes import study_note, write_study_note
from sweeps.results.existing import load, open_existing, ran_with
from sweeps.run import exit_at_once_if_stopped
from sweeps.text import table

EXAMPLE = """example:
  sweeps confirm study.yaml --top 3 --seeds 3              # 9 runs, one after another
  sweeps confirm study.yaml --top 3 --seeds 3 --workers 3  # the same runs, 3 at a time
On other machines, the same command with the same --storage joins in.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sweeps confirm", description="Train the best configurations again with "
                                     "fresh seeds (in the companion study <name>-confirm) and report how far the "
                                     "search's values overstated them.",
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--top", type=int, default=3, help="best complete trials to confirm (default 3)")
    parser.add_argument("--seeds", type=int, default=3, help="fresh-seed runs of each (default 3)")
    parser.add_argument("--workers", type=int, help="worker processes on this machine (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    add_override_argument(parser, "e.g. --set study.total_budget.amount=3e7; the runs train the stored "
                                  "config of the trials they confirm; passed on to --workers")
    parser.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)  # a child of --workers
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for flag in ("top", "seeds", "workers"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            return fail(exits.USAGE, f"--{flag} must be >= 1 (got {value})")
    signals.install()
    return run_command(lambda: confirm(args), args.study_file)


def confirm(args: argparse.Namespace) -> int:
    optuna.logging.set_verbosity(logging.WARNING)
    existing = open_existing(args.study_file, args.storage, args.study_name, overrides=args.sets)
    study = load(existing)
    config = ran_with(existing, study)
    sources = ranked(study.get_trials(deepcopy=False), config.study.direction == "maximize")[:args.top]
    if not sources:
        return fail(exits.FAILED, f"study {study.study_name!r} has no complete trial with a value to confirm: "
                                  f"run `sweeps run {args.study_file}` first")
    plan = planned(sources, args.seeds, config.study.seed)
    open_ledger(study, existing.config)  # the study file's total, recorded as `sweeps run` records it
    ledger = state_of(study)  # the main study's ledger: the runs count against its total budget
    # the companion's config: the main study's training settings, the search switched off
    task = load_task(companion_config(config, study.study_name, len(plan), ledger))  # a broken task queues nothing
    check = within_budget(study, plan, config, ledger, task)
    if check is not None:
        plan = check.allowed
        if not plan:  # nothing fits: nothing is queued or trained
            return exits.OK if args.as_worker else fail(exits.FAILED, budget_text(check))
    queue_config = companion_config(config, study.study_name, len(plan), ledger)
    companion = open_study(queue_config, companion_target(existing.target, len(plan)), task.n_train)
    link(study, companion)
    if not args.as_worker:  # the parent (or a lone process) queues; its workers only pull
        queue_missing(companion, plan)
    finished, open_runs = runs_to_make(companion, plan)
    n_trials = finished + len(open_runs)  # finished trials of earlier, larger plans count too
    target = companion_target(existing.target, n_trials)
    run_config = companion_config(config, study.study_name, n_trials, ledger)
    if open_runs:
        code = run(args, run_config, target, task)
        if code != exits.OK:
            return code
    if args.as_worker:  # the parent reports
        return exits.OK
    rows = confirmed(study, companion, [t.number for t in sources])
    print(f"study {study.study_name}: the best {len(rows)} trials trained again with {args.seeds} fresh seeds each "
          f"({runs_text(rows)} in study {companion.study_name}; {config.study.direction} {config.study.metric})")
    print(table([r.row() for r in rows]))
    print(ranking_note(rows))
    refresh_note(study, config, task)
    code = ending(companion, plan, args.study_file)
    if code == exits.OK and check is not None and check.left_out:
        print(f"note: {budget_text(check, state_of(study))}")
    return code


def within_budget(study: optuna.Study, plan: list[Confirmation], config: SweepConfig, ledger: LedgerState | None,
                  task: LoadedTask) -> BudgetCheck | None:
    """The runs the sweep's compute ledger (`study.total_budget` of the main study) still holds,
    planned as their reservations will be (sweeps/confirmation/companion.py); None without a ledger."""
    if ledger is None:
        return None
    companion = companion_of(study)
    run_config = companion_config(config, study.study_name, len(plan), ledger)
    spending = Spending.of(run_config, budget_of(run_config, task.tokens_per_example), task.n_train)
    pace = Pace()  # seconds per budget unit so far, for a time total on a counting budget
    if spending.estimated:
        for trial in [*study.get_trials(deepcopy=False, states=FINISHED),
                      *(companion.get_trials(deepcopy=False, states=FINISHED) if companion else [])]:
            pace.add(trial.user_attrs, spending.budget.unit)
    return split_by_budget(plan, companion, run_config, spending, ledger, pace)


def budget_text(check: BudgetCheck, now: LedgerState | None = None) -> str:
    """The one line on runs the total budget cannot hold; `now`: the ledger after the runs that fitted."""
    state = now or check
    return not_started_message(len(check.left_out), len(check.allowed) + len(check.left_out), state.left,
                               check.amount, check.unit, check.needs, state.stopped)


def refresh_note(study: optuna.Study, config: SweepConfig, task: LoadedTask) -> None:
    """The main study's dashboard note again: its recommendation now follows the confirmed
    values, its ledger includes the confirmation runs."""
    if config.dashboard.notes:
        write_study_note(study, study_note(study, config, task.n_train, tokens_per_example=task.tokens_per_example))


def run(args: argparse.Namespace, config: SweepConfig, target: SweepTarget, task: LoadedTask) -> int:
    """Train the queued runs: here, or in `--workers` child processes (each this command with
    `--as-worker`), all pulling the companion's queue through the ordinary sweep loop."""
    workers = args.workers or 1
    show = not args.quiet and not args.as_worker
    if workers > 1 and not args.as_worker:
        study = open_study(config, target, task.n_train)
        lost = start_and_wait(study, config, target, [worker_command(args) for _ in range(workers)], show)
        return lost[0].code if lost else exits.OK
    run_sweep(config, target, show_progress=show, task=task)
    return exits.OK


def worker_command(args: argparse.Namespace) -> list[str]:
    """A child's command line; the parent's store URL reaches it in $SWEEPS_STORAGE (`start_and_wait`)."""
    name = ["--study-name", args.study_name] if args.study_name else []
    sets = [arg for text in args.sets for arg in ("--set", text)]
    return [sys.executable, "-m", "sweeps.console", "confirm", args.study_file, "--as-worker", "--quiet",
            "--top", str(args.top), "--seeds", str(args.seeds), *name, *sets]


def ending(companion: optuna.Study, plan: list[Confirmation], study_file: str) -> int:
    """0 when every planned run finished; else one line on what is missing and how to resume."""
    _, open_runs = runs_to_make(companion, plan)
    if not open_runs:
        return exits.OK
    return fail(exits.FAILED, f"{len(open_runs)} of {len(plan)} confirmation runs have not finished (failed: see the "
                              f"trials of {companion.study_name}; or still running in another worker): run "
                              f"`sweeps confirm {study_file}` again to resume them")


if __name__ == "__main__":
    code = main()
    exit_at_once_if_stopped(code, sys.argv[1:])  # a worker child, or a stopped one: all is committed
    sys.exit(code)
