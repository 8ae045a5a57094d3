"""How a sweep ended: its summary (the finished count, the best trial and the report's
recommendation paragraph), then one exit code and one line. The same for one process and for the
parent of `--workers` (`end_sweep`), so both print the same answer and "0 trials finished" can
never end in success."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from storage.retry import with_retry
from sweeps import exits
from sweeps.budget.ledger_view import spent_message, state_of
from sweeps.config.study_file import SweepConfig
from sweeps.results.analysis import analyse
from sweeps.results.recommendation import recommendation
from sweeps.search.strategies import grid_size
from sweeps.trial.record import TrialRecord


@dataclass(frozen=True)
class Ending:
    code: int
    message: str  # a note when the code is 0, the reason and the likely fix otherwise


def ending_of(study: optuna.Study, n_trials: int, grid_size: int | None = None,
              budget_spent: str | None = None) -> Ending:
    """Judge the study's trials against the `n_trials` asked for.

    A finished trial is COMPLETE or PRUNED; a diverged trial (loss NaN/inf) is stored as PRUNED
    with `stop_reason: diverged`, so it counts as finished but never as a result. `budget_spent`:
    the line saying `study.total_budget` is spent (`sweeps.budget.ledger_view.spent_message`).
    """
    trials = study.get_trials(deepcopy=False)
    by_state = {state: [t for t in trials if t.state == state] for state in TrialState}
    complete, pruned = by_state[TrialState.COMPLETE], by_state[TrialState.PRUNED]
    failed, running = by_state[TrialState.FAIL], by_state[TrialState.RUNNING]
    diverged = [t for t in pruned if TrialRecord.of(t).stop_reason == "diverged"]
    finished = len(complete) + len(pruned)
    grid_done = grid_size is not None and len({tuple(sorted(t.params.items())) for t in trials}) >= grid_size
    if diverged and len(diverged) == finished and not complete:
        return Ending(exits.FAILED, f"all {len(diverged)} trials diverged (loss NaN/inf): lower "
                                    "search.base_lr.high (or try a smaller batch size or a longer warmup)")
    if not complete and budget_spent:
        return Ending(exits.FAILED, f"{budget_spent}: no trial finished with a value")
    if not complete:
        return Ending(exits.FAILED, f"no trial finished with a value ({finished} of {n_trials} finished: "
                                    f"{len(pruned)} pruned, {len(failed)} failed, {len(running)} running)"
                                    f"{last_error(failed)}: {no_result_fix(failed, running)}")
    if finished >= n_trials:
        note = f"{len(diverged)} of {finished} trials diverged (loss NaN/inf)" if diverged else ""
        return Ending(exits.OK, note)
    if budget_spent:
        return Ending(exits.OK, budget_spent)
    if grid_done:
        return Ending(exits.OK, f"stopped at {finished} of {n_trials} trials: the grid has no more points")
    return Ending(exits.FAILED, f"stopped at {finished} of {n_trials} trials ({len(failed)} failed, "
                                f"{len(running)} running){last_error(failed)}: run the same command again "
                                "to resume")


def summary_text(study: optuna.Study, metric: str) -> str:
    """What a sweep prints at its end: the finished trials and the best one, then the report's
    recommendation paragraph (`sweeps report` says the rest)."""
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    count = f"{finished} trial{'' if finished == 1 else 's'} finished"
    try:
        best = study.best_trial
    except ValueError:
        return f"{count}; none with a value"
    record = TrialRecord.of(best)
    lr = record.lr if record.lr is not None else float("nan")
    line = (f"{count}; best {metric} = {best.value:.4f} (trial {best.number}): batch_size {record.batch_size}, "
            f"lr {lr:.4g} ({record.coupling}), {record.epochs_completed} epochs, {record.updates} updates")
    analysis = analyse(study, with_importances=False)
    if not analysis.complete:  # a best value that is not finite
        return line
    return f"{line}\n\n{textwrap.fill(recommendation(analysis), width=100)}"


def end_sweep(study: optuna.Study, n_trials: int, config: SweepConfig) -> int:
    """The end of `sweeps run`, with one worker or many: the summary, then how it ended (its code)."""
    print(summary_text(study, config.study.metric))
    return report_ending(study, n_trials, config)


def report_ending(study: optuna.Study, n_trials: int, config: SweepConfig) -> int:
    """Print how the sweep ended (a note, or the reason and the fix) and return its exit code."""
    ending = ending_of(study, n_trials, grid_size(config) if config.sampler.name == "grid" else None,
                       spent_message(with_retry(lambda: state_of(study), "reading the ledger"))
                       if config.study.total_budget else None)
    if ending.code == exits.OK:
        if ending.message:
            print(f"note: {ending.message}")
    else:
        print(f"error: {ending.message}", file=sys.stderr)
    return ending.code


def last_error(failed: list[optuna.trial.FrozenTrial]) -> str:
    errors = [error for t in failed if (error := TrialRecord.of(t).error)]
    return f"; last error: {errors[-1]}" if errors else ""


def no_result_fix(failed: list, running: list) -> str:
    if failed:
        return "fix the error above, then run the same command again"
    if running:
        return "other workers still hold trials: wait for them, or run the same command again"
    return ("check that every worker writes to the same store (--storage, then $SWEEPS_STORAGE, then "
            "study.storage) and run the same command again")
