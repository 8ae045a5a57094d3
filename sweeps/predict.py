"""`sweeps predict STUDY.yaml --budget 10x`: the batch size, LR, length and warmup for a budget
larger than the sweep trained, from power laws fitted over its horizons, and `--verify` to train
the prediction there and compare.

The study must have `budget.horizons`: each trial's values at several lengths are the data the
laws are fitted on (`sweeps/results/frontier.py`: the optimum per horizon from a local fit over
the trials near it, the laws over the horizons, bootstrap intervals). `--budget` is a multiple of
`budget.per_trial` (`10x`, the longest horizon) or an amount in the budget's unit.

It prints the frontier (per horizon: the optimal batch size, effective LR and metric, with
intervals), the laws' exponents with intervals, and the prediction: batch size (rounded to a power
of two when the search's batch sizes are all powers of two, at most the training examples), effective LR and the
base LR under the coupling rule most near-optimal trials used, length, warmup (the near-optimal
trials' warmup share of their updates, at the target's updates), the expected metric with its
interval, and how far it extrapolates (the target over the largest horizon trained). It refuses
with exit 2 and the reason when the fits cannot carry the prediction (`frontier.Refusal`).

`--export FILE` writes a study file of one trial that trains the prediction (its LR fixed as an
effective LR, as `sweeps best --export` writes one). `--verify --seeds S` trains it at the target
with S fresh seeds in the companion study `<name>-predict` of the same store (`--neighbours`: also
LR and batch size x2 and /2, each with S seeds), the runs booked against the main study's
`study.total_budget` as `sweeps confirm`'s are (sweeps/confirmation/companion.py), and prints predicted
against measured. The prediction is stored on the companion (`PREDICTION_ATTR`), where
`sweeps report` reads it. Rerunning resumes: finished runs are kept.
Exit codes (`sweeps.exits`): 0 done, 1 a run did not finish (rerun to resume) or none fits the
total budget, 2 invalid study file or flag, or the fits cannot carry the prediction, 3 store not
there or not readable, 4 no such study, 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from objectives.tasks.datafiles import PATH_OPTION
from objectives.training.budget import Budget, plan_trial
from objectives.training.coupling import SCALE, couple
from objectives.training.units import unit_named
from sweeps import exits
from sweeps.best import moved, without_none
from sweeps.cli import add_override_argument, add_study_arguments, fail, run_command
from sweeps.config.study_file import IntRange, SweepConfig, parse_config
from sweeps.confirmation.confirmed import SeedRuns
from sweeps.errors import Refusal
from sweeps.loop import signals
from sweeps.results.existing import load, open_existing, ran_with
from sweeps.results.frontier import LEVEL, Frontier, Prediction, frontier, predict
from sweeps.text import table
from sweeps.trial.record import PREDICTION_ATTR, TrialRecord

EXAMPLE = """example:
  sweeps predict study.yaml --budget 10x                          # the prediction, and the fits behind it
  sweeps predict study.yaml --budget 10x --export big.yaml        # a study file that trains it
  sweeps predict study.yaml --budget 10x --verify --seeds 3 --neighbours --workers 2
"""

ARMS = ("predicted", "lr x2", "lr /2", "batch x2", "batch /2")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sweeps predict", description="Predict batch size, LR, length and "
                                     "warmup for a larger budget from the sweep's horizons; --verify trains it.",
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--budget", required=True, help="the target: a multiple of budget.per_trial (10x) or an "
                                                        "amount in the budget's unit")
    parser.add_argument("--export", metavar="FILE", help="write a study file that trains the prediction")
    parser.add_argument("--verify", action="store_true", help="train the prediction at the target budget "
                                                              "(companion study <name>-predict)")
    parser.add_argument("--seeds", type=int, default=3, help="with --verify: seeds per configuration (default 3)")
    parser.add_argument("--neighbours", action="store_true", help="with --verify: also LR and batch size x2 and /2")
    parser.add_argument("--workers", type=int, help="with --verify: worker processes on this machine")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    add_override_argument(parser, "passed on to --workers")
    parser.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for flag in ("seeds", "workers"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            return fail(exits.USAGE, f"--{flag} must be >= 1 (got {value})")
    signals.install()
    return run_command(lambda: predict_command(args), args.study_file)


@dataclass(frozen=True)
class PredictedRun:
    """What `sweeps predict` recommends at the target, as stored on the companion (`PREDICTION_ATTR`)."""

    budget: float  # in the budget's unit
    reach: float
    batch_size: int
    lr: float  # the effective peak LR
    base_lr: float  # under `coupling`, at the study's reference batch size
    coupling: str
    warmup_updates: int
    planned_updates: int
    value: float
    value_low: float
    value_high: float
    fitted_batch_size: float

    def attrs(self) -> dict[str, Any]:
        return asdict(self)


def target_of(text: str, config: SweepConfig) -> float:
    """`10x` (times budget.per_trial) or an amount in the budget's unit; ValueError when neither."""
    raw = text.strip().lower()
    amount = float(raw[:-1]) * float(config.budget.per_trial) if raw.endswith("x") else float(raw)
    if not math.isfinite(amount) or amount <= 0:
        raise ValueError(text)
    return amount


def predict_command(args: argparse.Namespace) -> int:
    optuna.logging.set_verbosity(logging.WARNING)
    existing = open_existing(args.study_file, args.storage, args.study_name, overrides=args.sets)
    study = load(existing)
    config = ran_with(existing, study)
    if config.budget.horizons is None:
        return fail(exits.USAGE, f"study {study.study_name!r} has no budget.horizons, whose values at several lengths "
                                 "the laws are fitted on: add budget.horizons (e.g. [0.125x, 0.25x, 0.5x]) and sweep")
    try:
        target = target_of(args.budget, config)
    except ValueError:
        return fail(exits.USAGE, f"--budget {args.budget!r} is neither a multiple like 10x nor an amount of "
                                 f"{config.budget.unit}")
    maximize = config.study.direction == "maximize"
    trials = study.get_trials(deepcopy=False)
    try:
        front = frontier(trials, maximize, seed=config.study.seed)
        prediction = predict(front, target)
    except Refusal as err:
        return fail(err.code, f"cannot predict for {study.study_name!r}: {err}")
    run = predicted_run(front, prediction, config, trials)
    if not args.as_worker:  # a --workers child of --verify only trains
        print(frontier_text(front, config, study.study_name))
        print(prediction_text(run, prediction, config))
    if args.export:
        folder = Path(args.export).resolve().parent
        data = export_data(run, config, study.study_name, folder)
        parse_config(data, folder)  # what is written must load
        Path(args.export).write_text(f"# The prediction of `sweeps predict` for study {study.study_name!r} at "
                                     f"{run.budget:g} {config.budget.unit}.\n" + yaml.safe_dump(data, sort_keys=False))
        print(f"wrote {args.export}: trains the prediction (sweeps run {args.export})")
    if args.verify:
        from sweeps.prediction_check import verify  # trains: loads torch only here

        return verify(args, existing, study, config, run)
    return exits.OK


def trials_attr(trials, name: str) -> Any:
    """The first value a trial recorded under `name` (n_train, tokens_per_example: the task's)."""
    for trial in trials:
        value = getattr(TrialRecord.of(trial), name)
        if value is not None:
            return value
    return None


def predicted_run(front: Frontier, prediction: Prediction, config: SweepConfig, trials) -> PredictedRun:
    """The prediction as a run: a whole batch size (a power of two when the search used powers of
    two; at most the training examples), its base LR under the coupling rule, and its warmup."""
    fitted = prediction.batch_size
    spec = config.search.batch_size
    powers = all(b & (b - 1) == 0 for b in config.search.batch_sizes())
    if (isinstance(spec, IntRange) and spec.power_of_two) or (isinstance(spec, list) and powers):
        batch_size = 2 ** round(math.log2(fitted))
    else:
        batch_size = max(1, round(fitted))
    n_train = trials_attr(trials, "n_train")
    if n_train:
        batch_size = min(batch_size, int(n_train))
    reference = config.search.reference_batch_size
    base_lr = prediction.lr / SCALE[front.coupling](batch_size / reference)
    budget = Budget(config.budget.unit, prediction.compute, float(config.budget.eval_every),
                    trials_attr(trials, "tokens_per_example"))
    planned = plan_trial(budget, int(n_train), batch_size, None, config.objective.drop_last).planned_updates \
        if n_train else 0
    return PredictedRun(prediction.compute, prediction.reach, batch_size, prediction.lr, base_lr, front.coupling,
                        int(round(front.warmup_share * planned)), planned, prediction.value,
                        prediction.value_interval.low, prediction.value_interval.high, fitted)


def frontier_text(front: Frontier, config: SweepConfig, study_name: str) -> str:
    unit, metric = config.budget.unit, config.study.metric
    rows = []
    for optimum, (b, lr, value) in zip(front.optima, front.optima_intervals, strict=True):
        rows.append({unit: f"{optimum.compute:g}", "batch_size": f"{optimum.batch_size:.0f}",
                     "batch_range": f"[{b.low:.0f}, {b.high:.0f}]", "lr": f"{optimum.lr:.3g}",
                     "lr_range": f"[{lr.low:.3g}, {lr.high:.3g}]", metric: f"{optimum.value:.4f}",
                     f"{metric}_range": f"[{value.low:.4f}, {value.high:.4f}]", "fit": optimum.method,
                     "trials": optimum.trials})
    level = f"{LEVEL:.0%}"
    return "\n".join([
        f"study {study_name}: the optimum at each horizon (a local fit over the trials near it; {level} bootstrap "
        "ranges)",
        table(rows),
        f"laws: batch size ~ {unit}^{front.batch_law.slope:.3f} [{front.batch_exponent.low:.3f}, "
        f"{front.batch_exponent.high:.3f}], effective LR ~ {unit}^{front.lr_law.slope:.3f} "
        f"[{front.lr_exponent.low:.3f}, {front.lr_exponent.high:.3f}], {metric} = {front.value_law.limit:.4f} "
        f"{front.value_law.scale:+.4g} x {unit}^-{front.value_law.exponent:.3f}",
    ])


def prediction_text(run: PredictedRun, prediction: Prediction, config: SweepConfig) -> str:
    unit, metric = config.budget.unit, config.study.metric
    b, lr = prediction.batch_interval, prediction.lr_interval
    return "\n".join([
        f"prediction at {run.budget:g} {unit} ({run.reach:.3g}x the largest horizon trained):",
        f"  batch size {run.batch_size} (fitted {run.fitted_batch_size:.0f}, [{b.low:.0f}, {b.high:.0f}])",
        f"  effective LR {run.lr:.4g} ([{lr.low:.4g}, {lr.high:.4g}]); base LR {run.base_lr:.4g} with coupling "
        f"{run.coupling} (reference batch size {config.search.reference_batch_size})",
        f"  length {run.budget:g} {unit} ({run.planned_updates} updates), warmup {run.warmup_updates} updates",
        f"  expected {metric} {run.value:.4f} ([{run.value_low:.4f}, {run.value_high:.4f}]: the fit's sampling "
        "error, not a seed's noise)",
        *outside_search(run, config),
    ])


def outside_search(run: PredictedRun, config: SweepConfig) -> list[str]:
    """A note when the predicted batch size lies outside the searched ones: the law extrapolates there."""
    sizes = config.search.batch_sizes()
    if min(sizes) <= run.batch_size <= max(sizes):
        return []
    return [f"  note: batch size {run.batch_size} lies outside the searched {min(sizes)}-{max(sizes)}: the law "
            "carries it there; --verify --neighbours trains it beside x2 and /2"]


def export_data(run: PredictedRun, config: SweepConfig, study_name: str, folder: Path,
                n_trials: int = 1) -> dict[str, Any]:
    """A study file that trains the predicted run at its budget: the LR fixed as an effective LR
    (coupling none at its own batch size; adam_sqrt's betas and eps fixed as the rule sets them),
    warmup in updates, no horizons, evaluated as often as the sweep's trials were."""
    data = json.loads(json.dumps(config.to_dict()))
    data["study"].update(name=f"{study_name}-predicted", n_trials=n_trials, storage=None, total_budget=None)
    data["sampler"] = {"name": "random"}
    data["pruner"] = {"name": "none"}
    scale = run.budget / float(config.budget.per_trial)
    data["budget"].update(per_trial=run.budget, eval_every=float(config.budget.eval_every) * scale, horizons=None)
    if unit_named(config.budget.unit).whole:
        data["budget"]["per_trial"] = round(run.budget)
        data["budget"]["eval_every"] = max(1, round(data["budget"]["eval_every"]))
    data["search"] = {"batch_size": run.batch_size, "base_lr": run.lr, "coupling": "none",
                      "reference_batch_size": run.batch_size, "warmup_fraction": 0.0}
    data["schedule"]["warmup_updates"] = run.warmup_updates
    if run.coupling == "adam_sqrt":
        coupled = couple(run.coupling, run.base_lr, run.batch_size, config.search.reference_batch_size,
                         config.objective.betas, config.objective.eps)
        data["objective"]["betas"] = list(coupled.betas)
        data["objective"]["eps"] = coupled.eps
    options = data["objective"]["options"]
    if PATH_OPTION in options:
        options[PATH_OPTION] = moved(options[PATH_OPTION], config.base_dir, folder)
    data["dashboard"]["artifacts"] = moved(data["dashboard"]["artifacts"], config.base_dir, folder)
    return without_none(data)


@dataclass
class Measured(SeedRuns):
    arm: str
    batch_size: int
    lr: float
    values: list[float]


def measured(companion: optuna.Study) -> list[Measured]:
    """Each arm's finished runs in the companion, in `ARMS` order (a run made twice counts once)."""
    arms: dict[str, Measured] = {}
    seen: set[tuple[str, int]] = set()
    for trial in sorted(companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        record = TrialRecord.of(trial)
        key = (record.predicts_arm, record.confirm_seed)
        if record.predicts_arm is None or key in seen or trial.value is None:
            continue
        seen.add(key)
        arm = arms.setdefault(record.predicts_arm, Measured(record.predicts_arm, record.batch_size, record.lr, []))
        arm.values.append(trial.value)
    return [arms[a] for a in ARMS if a in arms]


def comparison_text(run: dict[str, Any], rows: list[Measured], metric: str, unit: str) -> str:
    """Predicted against measured, per arm (read by `sweeps predict --verify` and `sweeps report`)."""
    arms = [{"arm": m.arm, "batch_size": m.batch_size, "lr": f"{m.lr:.4g}", "runs": len(m.values),
             f"{metric}_mean": None if m.mean is None else f"{m.mean:.4f}",
             "sd": None if m.sd is None else f"{m.sd:.4f}"} for m in rows]
    head = (f"at {run['budget']:g} {unit}: predicted {metric} {run['value']:.4f} "
            f"([{run['value_low']:.4f}, {run['value_high']:.4f}]) at batch size {run['batch_size']}, "
            f"effective LR {run['lr']:.4g}")
    lines = [head, table(arms)]
    predicted = next((m for m in rows if m.arm == "predicted"), None)
    if predicted is not None and predicted.mean is not None:
        inside = run["value_low"] <= predicted.mean <= run["value_high"]
        lines.append(f"measured {predicted.mean:.4f} over {len(predicted.values)} seeds: "
                     f"{'inside' if inside else 'outside'} the predicted range")
    return "\n".join(lines)


def stored_prediction(companion: optuna.Study) -> dict[str, Any] | None:
    stored = companion.user_attrs.get(PREDICTION_ATTR)
    return stored if isinstance(stored, dict) else None


if __name__ == "__main__":
    sys.exit(main())
