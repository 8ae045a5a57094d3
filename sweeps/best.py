"""`sweeps best STUDY.yaml [--top K] [--export best.yaml]`: the best trials and the settings they
trained with, and a study file that trains the best one again.

Each row shows what the trial really used (sweeps/trial/record.py): batch size, epochs (when
searched), planned and made updates, the effective LR after coupling, the coupling rule and base
LR, warmup, schedule and training seed. `--export` writes a study file of one trial that trains
exactly that configuration: the batch size, epochs and warmup fixed, coupling `none` with the base
LR set to the trial's effective LR (with adam_sqrt, the coupled betas and eps too), the same
schedule and budget, and `study.training_seed` set to the trial's seed. On the same device and
thread count its value is the trial's (a `seconds` budget, measured on the clock, is the exception).
The export may sit in another folder: its relative paths (`objective.options.path`,
`dashboard.artifacts`) are rewritten for that folder, so they name the same files; a task module
found beside the study file is not moved, and a note says how to reach it.
The settings come from the config the study stored when it was created (the study file with any
`--set` overrides applied, replaced by `--allow-changes`), or from the study file when the study
stored none; a study file that differs from it gets a one-line note (`results.existing.ran_with`).
With `budget.horizons` it also lists the best trial at each horizon, among every trial that
answered it (complete or pruned; one that diverged there is left out), and `--export FILE
--horizon H` writes a study file that trains that horizon's best (or `--trial N`'s) as a dedicated
run of length H: `budget.per_trial` H, no horizons, `schedule.warmup_updates` the trial's recorded
warmup (the same for every length), the rest as above. Its value is the one the horizon recorded.
`--format json` prints the same facts as one JSON document: `study`, `metric`, `direction`, the
trials' `counts` by state, `finished`, `best` (the rows, each with its sampled `params`) and
`horizons` (`unit` and the per-horizon rows as `best`; null without budget.horizons); `--export`'s
`wrote` line then goes to stderr.
Exit codes (`sweeps.exits`): 0 printed, 1 no finished trial yet (or none answered the horizon),
2 invalid study file or flag, 3 store not there or not readable, 4 no such study.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial, TrialState

from objectives.registry import BUILTIN
from objectives.tasks.datafiles import PATH_OPTION, resolve_path
from objectives.training.coupling import couple
from sweeps import exits
from sweeps.cli import JSON, TEXT, add_format_argument, add_study_arguments, fail, run_command
from sweeps.config.study_file import FloatRange, SweepConfig, horizon_length, parse_config
from sweeps.errors import NotExportable
from sweeps.results.existing import load, open_existing, ran_with
from sweeps.results.horizons import HorizonBest, best_of_horizon, best_per_horizon, fraction, length_text, whole
from sweeps.studies import trial_counts
from sweeps.text import emit_json, table
from sweeps.trial.record import HorizonRecord, TrialRecord

EXAMPLE = """example:
  sweeps best study.yaml --top 3 --export best.yaml
  sweeps run best.yaml        # trains the best trial again: same settings, same seed, same value
  sweeps best study.yaml --export short.yaml --horizon 0.25x   # with budget.horizons: the best at one
  sweeps best study.yaml --format json     # the same facts as one JSON document
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sweeps best", description="The best trials with their effective "
                                     "settings; --export writes a study file that trains the best one again.",
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--top", type=int, default=5, help="trials to show (default 5)")
    parser.add_argument("--export", metavar="FILE", help="write a study file that trains the best trial again")
    parser.add_argument("--trial", type=int, help="with --export: export this trial number instead of the best")
    parser.add_argument("--horizon", metavar="H", help="with --export and budget.horizons: export the best trial "
                        "at horizon H (a length of budget.horizons in the budget's unit, or like 0.25x of "
                        "budget.per_trial) as a dedicated run of that length")
    add_format_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.top < 1:
        return fail(exits.USAGE, f"--top must be >= 1 (got {args.top})")
    return run_command(lambda: best(args), args.study_file)


def fixed_or_param(trial: FrozenTrial, name: str, spec: Any) -> Any:
    """The value a trial trained with for a search key: its parameter when searched, else the
    study file's fixed value (a one-value list or a range of one point)."""
    if name in trial.params:
        return trial.params[name]
    if isinstance(spec, list) and len(spec) == 1:
        return spec[0]
    if hasattr(spec, "low") and spec.low == spec.high:
        return spec.low
    return spec


def searched_epochs(trial: FrozenTrial, config: SweepConfig) -> int | None:
    search = config.search
    return None if search.epochs is None else fixed_or_param(trial, "epochs", search.epochs)


def settings_of(trial: FrozenTrial, config: SweepConfig) -> dict[str, Any]:
    """One row: what the trial trained with, as it stored it (its record) and as it sampled it."""
    rec = TrialRecord.of(trial)
    search = config.search
    epochs = searched_epochs(trial, config)
    return {
        "trial": trial.number,
        "value": trial.value,
        "batch_size": rec.batch_size,
        "epochs": rec.epochs_completed if epochs is None else epochs,  # searched, else as trained
        "updates": rec.updates,
        "planned_updates": rec.planned_updates,
        "lr": rec.lr,
        "coupling": rec.coupling,
        "base_lr": fixed_or_param(trial, "base_lr", search.base_lr),
        "warmup": fixed_or_param(trial, "warmup_fraction", search.warmup_fraction),
        "schedule": config.schedule.name,
        "seed": rec.seed,
    }


def ranked(trials: list[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    return sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))


def horizons_text(config: SweepConfig) -> str:
    lengths = config.budget.horizon_units() or ()
    per_trial = config.budget.per_trial
    return (f"{', '.join(length_text(h) for h in lengths)} {config.budget.unit} "
            f"({', '.join(fraction(h, per_trial) for h in lengths)})")


def horizon_named(given: str, config: SweepConfig) -> float | None:
    """The study's horizon `given` names (a length in the budget's unit, or like '0.25x'), or None."""
    try:
        length = horizon_length(given, config.budget.per_trial)
    except ValueError:
        return None
    lengths = config.budget.horizon_units() or ()
    return next((h for h in lengths if math.isclose(h, length, rel_tol=1e-9, abs_tol=1e-12)), None)


def horizon_rows(bests: list[HorizonBest], config: SweepConfig) -> list[dict[str, Any]]:
    """One row per horizon: its best trial and what that trial trained with there."""
    rows = []
    for b in bests:
        rec = TrialRecord.of(b.trial)
        rows.append({"horizon": whole(b.length), "fraction": fraction(b.length, config.budget.per_trial),
                     "value": b.value, "trial": b.trial.number, "batch_size": rec.batch_size, "lr": rec.lr,
                     "coupling": rec.coupling, "updates": b.horizon.updates, "examples": b.horizon.examples,
                     "trials": b.finished})
    return rows


def document(study_name: str, trials: list[FrozenTrial], top: list[FrozenTrial], shown: int,
             bests: list[HorizonBest], config: SweepConfig) -> dict[str, Any]:
    """What the text shows, as `--format json` prints it: the trials by state, the `shown` best of
    `top` (the finished ones, ranked; each with its sampled parameters beside the settings it
    trained with) and, with budget.horizons, the best per horizon (null without)."""
    return {"study": study_name, "metric": config.study.metric, "direction": config.study.direction,
            "counts": trial_counts(trials), "finished": len(top),
            "best": [{**settings_of(t, config), "params": t.params} for t in top[:shown]],
            "horizons": None if config.budget.horizons is None else {
                "unit": config.budget.unit, "best": horizon_rows(bests, config)}}


def best(args: argparse.Namespace) -> int:
    existing = open_existing(args.study_file, args.storage, args.study_name)
    study = load(existing)
    config = ran_with(existing, study)
    maximize = config.study.direction == "maximize"
    length = None
    if args.horizon is not None:
        if not args.export:
            return fail(exits.USAGE, f"--horizon {args.horizon} picks the horizon --export writes: add --export FILE")
        if config.budget.horizons is None:
            return fail(exits.USAGE, f"--horizon {args.horizon}: study {study.study_name!r} has no budget.horizons; "
                                     "leave --horizon out to export a trial at its own length")
        length = horizon_named(args.horizon, config)
        if length is None:
            return fail(exits.USAGE, f"--horizon {args.horizon} is not a horizon of study {study.study_name!r}: "
                                     f"pick one of {horizons_text(config)}")
    trials = study.get_trials(deepcopy=False)
    top = ranked(trials, maximize)
    bests = best_per_horizon(trials, maximize) if config.budget.horizons is not None else []
    if not top and not bests:
        return fail(exits.FAILED, f"study {study.study_name!r} has no finished trial with a value yet: "
                                  f"run `sweeps run {args.study_file}`")
    direction = f"{'maximize' if maximize else 'minimize'} {config.study.metric}"
    if args.format == JSON:
        emit_json(document(study.study_name, trials, top, args.top, bests, config))
    elif top:
        print(f"study {study.study_name}: best {min(args.top, len(top))} of {len(top)} finished trials "
              f"({direction})")
        print(table([settings_of(t, config) for t in top[:args.top]]))
    else:
        print(f"study {study.study_name}: no complete trial yet ({direction})")
    if bests and args.format == TEXT:
        print(f"\nbest per horizon ({config.budget.unit}), among the complete and pruned trials that answered it:")
        print(table(horizon_rows(bests, config)))
    if not args.export:
        return exits.OK
    try:
        return export(args, study.study_name, trials, top, config, length)
    except NotExportable as err:
        return fail(err.code, str(err))


def export(args: argparse.Namespace, study_name: str, trials: list[FrozenTrial], top: list[FrozenTrial],
           config: SweepConfig, length: float | None) -> int:
    horizon = None
    maximize = config.study.direction == "maximize"
    if length is not None:
        found = best_of_horizon(trials, maximize, length, args.trial)
        shown = f"{length_text(length)} {config.budget.unit}"
        if found is None and args.trial is not None:
            return fail(exits.USAGE, f"--trial {args.trial} answered no horizon {shown} in {study_name!r} (pruned "
                                     "before it, diverged, or not finished): drop --trial for that horizon's best")
        if found is None:
            return fail(exits.FAILED, f"no trial of {study_name!r} answered horizon {shown} yet: run more trials, "
                                      "or pick a shorter horizon")
        chosen, horizon = found
    elif not top:
        return fail(exits.FAILED, f"study {study_name!r} has no complete trial to export yet: pass --horizon H to "
                                  "export a horizon's best")
    else:
        chosen = top[0]
        if args.trial is not None:
            by_number = {t.number: t for t in top}
            if args.trial not in by_number:
                return fail(exits.USAGE, f"--trial {args.trial} is not a finished trial of {study_name!r}")
            chosen = by_number[args.trial]
    folder = Path(args.export).resolve().parent
    data = export_data(chosen, config, study_name, folder, horizon)
    parse_config(data, folder)  # what is written must load
    try:
        Path(args.export).write_text(export_header(chosen, study_name, config, horizon)
                                     + yaml.safe_dump(data, sort_keys=False))
    except OSError as err:
        return fail(exits.USAGE, f"--export {args.export}: cannot write it ({err.strerror}): create its folder "
                                 "or pick another path")
    at = ("" if horizon is None
          else f" at horizon {length_text(horizon.length)} {config.budget.unit}, as a dedicated run")
    print(f"wrote {args.export}: trains trial {chosen.number} again{at} (sweeps run {args.export})",
          file=sys.stderr if args.format == JSON else sys.stdout)  # stdout holds the JSON document alone
    for note in (module_left_behind(config, folder), fused_note(chosen)):
        if note:
            print(f"note: {note}", file=sys.stderr)
    return exits.OK


def fused_note(trial: FrozenTrial) -> str | None:
    """A trial trained in a fused group (objective.fuse) comes back alone within the fused tolerance."""
    size = TrialRecord.of(trial).fused_size
    if not size or size <= 1:
        return None
    return (f"trial {trial.number} trained in a fused group of {size}: trained alone, the exported run gives its "
            "value again within the fused tolerance (docs/guide/fused_training.md), not bit for bit")


def without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    return value


def moved(raw: Any, base_dir: str, folder: Path) -> Any:
    """A relative path of the study file (relative to `base_dir`), relative to `folder` instead."""
    if not isinstance(raw, str) or not raw or os.path.isabs(os.path.expanduser(raw)):
        return raw
    return os.path.relpath(resolve_path(base_dir, raw), folder)


def module_left_behind(config: SweepConfig, folder: Path) -> str | None:
    """A task module beside the study file (importable from there) that is not beside the export."""
    task, study_dir = config.objective.task, Path(config.base_dir)
    if task in BUILTIN or ":" not in task or folder == study_dir:
        return None
    top = task.partition(":")[0].split(".")[0]
    names = (top, f"{top}.py")
    if not any((study_dir / n).exists() for n in names) or any((folder / n).exists() for n in names):
        return None
    return (f"task module {top!r} sits beside the study file in {study_dir}, not beside the export: "
            f"copy it to {folder}, or run with PYTHONPATH={study_dir}")


def export_data(trial: FrozenTrial, config: SweepConfig, study_name: str, folder: Path,
                horizon: HorizonRecord | None = None) -> dict[str, Any]:
    """A study file of one trial that trains `trial`'s configuration with its seed, written in
    `folder`: its relative paths name the same files from there. With `horizon` (one the trial
    answered), a dedicated run of that length."""
    rec = TrialRecord.of(trial)
    row = settings_of(trial, config)
    if rec.batch_size is None or rec.lr is None or rec.seed is None:
        raise NotExportable(f"trial {trial.number} stored no batch size, LR or seed: it cannot be exported; "
                            "pick another with --trial")
    data = json.loads(json.dumps(config.to_dict()))  # tuples as lists, plain YAML types
    data["study"].update(name=f"{study_name}-trial{trial.number}", n_trials=1, training_seed=rec.seed,
                         storage=None)
    data["sampler"] = {"name": "random"}
    options = data["objective"]["options"]
    if PATH_OPTION in options:
        options[PATH_OPTION] = moved(options[PATH_OPTION], config.base_dir, folder)
    data["dashboard"]["artifacts"] = moved(data["dashboard"]["artifacts"], config.base_dir, folder)
    data["pruner"] = {"name": "none"}
    warmup = row["warmup"]
    if isinstance(warmup, FloatRange):  # not stored: cannot happen for a trial that sampled it
        raise NotExportable(f"trial {trial.number} holds no warmup_fraction: pick another with --trial")
    search = {"batch_size": rec.batch_size, "base_lr": rec.lr, "coupling": "none",
              "reference_batch_size": rec.batch_size, "warmup_fraction": warmup}
    epochs = searched_epochs(trial, config)
    if epochs is not None:
        search["epochs"] = epochs
    data["search"] = search
    rule = rec.coupling or "none"
    if rule == "adam_sqrt":  # the coupling scaled betas and eps too: fix them as the trial had them
        coupled = couple(rule, row["base_lr"], rec.batch_size, config.search.reference_batch_size,
                         config.objective.betas, config.objective.eps)
        data["objective"]["betas"] = list(coupled.betas)
        data["objective"]["eps"] = coupled.eps
    if rec.micro_batch and rec.micro_batch < rec.batch_size:  # it trained in micro-batches: the same ones
        data["objective"]["max_micro_batch"] = rec.micro_batch
    if horizon is not None:
        dedicated(data, trial, rec, horizon, study_name)
    return without_none(data)


def dedicated(data: dict[str, Any], trial: FrozenTrial, rec: TrialRecord, horizon: HorizonRecord,
              study_name: str) -> None:
    """The export made a dedicated run of the horizon's length: what the branch trained, exactly
    (the same warmup in updates, the decay over the last part of that length, the same grid)."""
    if rec.warmup_updates is None:
        raise NotExportable(f"trial {trial.number} recorded no warmup_updates: it cannot be exported at a horizon")
    length = whole(horizon.length)
    budget = data["budget"]
    budget.pop("horizons", None)
    budget["per_trial"] = length
    if budget["eval_every"] > length:  # the horizon ends before the grid's first point: evaluated at its end
        budget["eval_every"] = length
    data["schedule"]["warmup_updates"] = rec.warmup_updates
    data["search"]["warmup_fraction"] = 0.0
    data["study"]["name"] = f"{study_name}-trial{trial.number}-h{length_text(length)}"


def export_header(trial: FrozenTrial, study_name: str, config: SweepConfig,
                  horizon: HorizonRecord | None = None) -> str:
    rec = TrialRecord.of(trial)
    if horizon is None:
        return (f"# Trial {trial.number} of study {study_name!r}: {config.study.metric} = {trial.value!r}\n"
                f"# batch size {rec.batch_size}, effective LR {rec.lr!r} ({rec.coupling} coupling), seed {rec.seed}.\n"
                f"# Written by `sweeps best --export`; `sweeps run` on this file trains that configuration again.\n")
    length = f"{length_text(horizon.length)} {config.budget.unit} ({fraction(horizon.length, config.budget.per_trial)})"
    return (f"# Trial {trial.number} of study {study_name!r} at horizon {length}: "
            f"{config.study.metric} = {horizon.value!r}\n"
            f"# batch size {rec.batch_size}, effective LR {rec.lr!r} ({rec.coupling} coupling), seed {rec.seed}, "
            f"warmup {rec.warmup_updates} updates.\n"
            f"# Written by `sweeps best --export --horizon`; `sweeps run` on this file trains that horizon as a "
            f"dedicated run.\n")


if __name__ == "__main__":
    sys.exit(main())
