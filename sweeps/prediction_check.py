"""`sweeps predict --verify`: train the prediction at its budget, with fresh seeds, in the
companion study `<name>-predict` of the same store, and print predicted against measured.

The runs are queued and trained as `sweeps confirm`'s are (sweeps/confirmation/companion.py): ordinary
trials of a study that trains only its queue, each with a fixed seed, booked against the main
study's `study.total_budget` (the runs that do not fit are left out, the predicted arm first in
line), resumed by running the command again. With `--neighbours` the LR (x2, /2, the batch size
kept) and the batch size (x2, /2, the base LR kept under the coupling rule) are trained beside it.
"""

from __future__ import annotations

import argparse
import json
import sys

import optuna

from sweeps import exits
from sweeps.budget.ledger_view import not_started_message, state_of
from sweeps.budget.spending import Spending
from sweeps.cli import fail
from sweeps.config.plan import budget_of
from sweeps.config.study_file import SweepConfig, parse_config
from sweeps.confirmation.companion import (
    Confirmation,
    companion_target,
    confirmation_seed,
    link,
    queue_missing,
    runs_to_make,
    split_by_budget,
)
from sweeps.loop.runner import load_task, open_ledger, open_study, run_sweep
from sweeps.loop.workers import start_and_wait
from sweeps.predict import ARMS, PredictedRun, comparison_text, measured
from sweeps.results.existing import Existing
from sweeps.trial.record import PREDICT_STUDY_ATTR, PREDICTION_ATTR, companion_name

SEED_OFFSET = 104_729  # prediction runs' seeds: confirmation seeds of a study seed moved this far on


def arms_of(run: PredictedRun, neighbours: bool, n_train: int) -> list[tuple[str, int, float]]:
    """(arm, batch size, base LR) to train: the prediction, and with `neighbours` the four around it
    (a batch size past the training examples is left out)."""
    arms = [("predicted", run.batch_size, run.base_lr)]
    if neighbours:
        arms += [("lr x2", run.batch_size, 2 * run.base_lr), ("lr /2", run.batch_size, run.base_lr / 2),
                 ("batch x2", 2 * run.batch_size, run.base_lr), ("batch /2", max(1, run.batch_size // 2), run.base_lr)]
    return [arm for arm in arms if arm[1] <= n_train]


def planned_runs(run: PredictedRun, arms: list[tuple[str, int, float]], seeds: int,
                 study_seed: int) -> list[Confirmation]:
    return [Confirmation(None, confirmation_seed(study_seed + SEED_OFFSET, ARMS.index(name), r),
                         {"batch_size": batch_size, "base_lr": base_lr}, arm=name, budget=run.budget)
            for name, batch_size, base_lr in arms for r in range(seeds)]


def prediction_config(config: SweepConfig, study_name: str, run: PredictedRun, arms: list[tuple[str, int, float]],
                      n_trials: int, ledger) -> SweepConfig:
    """The main study's training settings at the target budget: no horizons, the warmup in updates,
    evaluated as often as the sweep's trials were, the search narrowed to the arms (a random
    sampler and no pruner: the queue supplies every point, each run trains to its budget)."""
    data = json.loads(json.dumps(config.to_dict(), default=str))
    data["study"].update(name=companion_name(study_name, "predict"), n_trials=max(1, n_trials),
                         total_budget=None if ledger is None else {"amount": ledger.amount, "unit": ledger.unit})
    data["sampler"], data["pruner"] = {"name": "random"}, {"name": "none"}
    every = float(config.budget.eval_every) * run.budget / float(config.budget.per_trial)
    data["budget"].update(per_trial=run.budget, eval_every=every, horizons=None)
    data["search"] = {"batch_size": sorted({a[1] for a in arms}), "base_lr": sorted({a[2] for a in arms}),
                      "coupling": run.coupling, "reference_batch_size": config.search.reference_batch_size,
                      "warmup_fraction": 0.0}
    data["schedule"]["warmup_updates"] = run.warmup_updates
    return parse_config(data, config.base_dir)


def verify(args: argparse.Namespace, existing: Existing, study: optuna.Study, config: SweepConfig,
           run: PredictedRun) -> int:
    open_ledger(study, existing.config)  # the study file's total, recorded as `sweeps run` records it
    ledger = state_of(study)
    probe = prediction_config(config, study.study_name, run, arms_of(run, args.neighbours, 2**62), 1, ledger)
    task = load_task(probe)
    arms = arms_of(run, args.neighbours, task.n_train)
    plan = planned_runs(run, arms, args.seeds, config.study.seed)
    run_config = prediction_config(config, study.study_name, run, arms, len(plan), ledger)
    companion_name_ = companion_name(study.study_name, "predict")
    companion = open_study(run_config, companion_target(existing.target, len(plan), "predict"), task.n_train)
    if ledger is not None:
        spending = Spending.of(run_config, budget_of(run_config, task.tokens_per_example), task.n_train)
        check = split_by_budget(plan, companion, run_config, spending, ledger)
        if check.left_out:
            text = not_started_message(len(check.left_out), len(plan), check.left, check.amount, check.unit,
                                       check.needs, check.stopped)
            if not check.allowed:
                return exits.OK if args.as_worker else fail(exits.FAILED, text)
            print(f"note: {text}")
            plan = check.allowed
    link(study, companion, PREDICT_STUDY_ATTR)
    if not args.as_worker:
        companion.set_user_attr(PREDICTION_ATTR, run.attrs())
        queue_missing(companion, plan)
    finished, open_runs = runs_to_make(companion, plan)
    target = companion_target(existing.target, finished + len(open_runs), "predict")
    if open_runs:
        run_config = prediction_config(config, study.study_name, run, arms, finished + len(open_runs), ledger)
        workers = args.workers or 1
        show = not args.quiet and not args.as_worker
        if workers > 1 and not args.as_worker:
            lost = start_and_wait(companion, run_config, target, [worker_command(args) for _ in range(workers)], show)
            if lost:
                return lost[0].code
        else:
            run_sweep(run_config, target, show_progress=show, task=task)
    if args.as_worker:
        return exits.OK
    print(comparison_text(run.attrs(), measured(companion), config.study.metric, config.budget.unit))
    _, still_open = runs_to_make(companion, plan)
    if still_open:
        return fail(exits.FAILED, f"{len(still_open)} of {len(plan)} prediction runs have not finished (see the "
                                  f"trials of {companion_name_}): run the same `sweeps predict --verify` again "
                                  "to resume them")
    return exits.OK


def worker_command(args: argparse.Namespace) -> list[str]:
    """A child's command line; the parent's store URL reaches it in $SWEEPS_STORAGE (`start_and_wait`)."""
    name = ["--study-name", args.study_name] if args.study_name else []
    sets = [arg for text in args.sets for arg in ("--set", text)]
    more = ["--neighbours"] if args.neighbours else []
    return [sys.executable, "-m", "sweeps.console", "predict", args.study_file, "--budget", args.budget, "--verify",
            "--seeds", str(args.seeds), *more, "--as-worker", "--quiet", *name, *sets]
