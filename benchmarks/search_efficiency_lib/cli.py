"""The command line of benchmarks/search_efficiency.py (whose docstring describes the benchmark):
which tasks, seeds and methods, then --make-reference, --noise, --estimate, the grid (or --load)
and the tables and figures per task group and margin."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import optuna

from sweeps.config.study_file import horizon_length

from .analysis import (
    draw_figure,
    draw_share_figure,
    figure_path,
    print_table,
    protocol_report,
    speedups,
    with_pooled_best,
)
from .grid import load_runs, report_estimate, run_grid, saved_runs
from .methods import CRN_GRID, CRN_METHODS, CRN_SERVICE, METHODS, VARIANTS, WSD_BASELINES, resolve_variant
from .reference import (
    DEFAULT_REFERENCE,
    NOISE_FILE,
    NOISE_SEEDS,
    REFERENCE_FILE,
    REFERENCE_PROTOCOLS,
    load_noise,
    load_reference,
    make_reference,
    measure_noise,
    noise_margins,
    resolve_reference,
)
from .tasks import (
    CHAR_LM_LEVEL,
    DEFAULT_TASKS,
    DEVELOPMENT,
    GROUPS,
    HELD_OUT,
    HELD_OUT_30,
    ISSUE30_FULL_TRIALS,
    ISSUE30_SEEDS,
    MARGIN,
    PRIOR_SECONDS_PER_1K,
    QUICK,
    TASKS,
    build_corpus,
    char_lm_spec,
    expand_tasks,
    fingerprint,
    issue30_specs,
)
from .training import measure_eval_charge, time_full_trial


def main(argv: list[str] | None = None, description: str | None = None) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="2 seeds, 4 full trials' compute per method, development tasks only (a smoke run)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method and task (default 5; 2 quick)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS) + ["char_lm"] + list(HELD_OUT_30) + sorted(GROUPS),
                        default=None,
                        help="tasks, or the groups " + ", ".join(f"{g} ({' '.join(v)})" for g, v in GROUPS.items())
                        + f"; default {' '.join(DEFAULT_TASKS)} ({' '.join(DEVELOPMENT)} with --quick)")
    parser.add_argument("--corpus-mb", type=float, default=20.0,
                        help="char_lm: the corpus is the first this many MB (2**20 bytes) of the stdlib's *.py files")
    parser.add_argument("--compare", nargs="*", default=None, metavar="VARIANT",
                        help=f"compare service settings instead (default all): {', '.join(VARIANTS)}")
    parser.add_argument("--make-reference", action="store_true",
                        help="(re)make the named tasks' entries of " + REFERENCE_FILE.name)
    parser.add_argument("--noise", action="store_true",
                        help=f"measure the std of the final metric over {NOISE_SEEDS} seeds of the reference's best "
                             f"configuration per task, into {NOISE_FILE.name} (the second margin is twice it)")
    parser.add_argument("--reference", choices=REFERENCE_PROTOCOLS, default=DEFAULT_REFERENCE,
                        help="the value targets are measured from: seed_mean (default; the mean over the noise "
                             "seeds of the best evaluation of the grid's best configuration) or grid_max (the "
                             "grid's best single trial: the figures before issue 17)")
    parser.add_argument("--also-margin", type=float, nargs="*", default=[],
                        help="also print the tables for these fixed margins, from the same runs")
    parser.add_argument("--save", help="append each finished run to this file (JSON lines) as it completes; "
                                       "runs already in it are read back, not run again (resume)")
    parser.add_argument("--load", nargs="+", help="analyse runs saved with --save (several files: merged) instead")
    parser.add_argument("--estimate", action="store_true",
                        help="print the time estimate of the runs asked for (minus those in --save) and stop")
    parser.add_argument("--methods", nargs="+", choices=METHODS + WSD_BASELINES + tuple(CRN_METHODS), default=None,
                        help="run only these methods (the speedups need the service and a baseline); "
                             "NAME+wsd: that baseline training with the service's wsd schedule instead of cosine")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--figure", metavar="PNG",
                        help="also draw best value against compute per task, one line per method or "
                             "variant (medians, IQR bands, both targets), to this PNG; one file per "
                             "task group, the group's name added before .png")
    parser.add_argument("--service-label", default="service",
                        help="with --load: the saved variant (from --compare) to rate against the baselines")
    parser.add_argument("--protocol", choices=("issue17", "crn"), default="issue17",
                        help="crn: issue 30's protocol (docs/search_efficiency.md): the baselines on the service's "
                             "recipe, common random numbers, evaluation charged, 20 full trials, 12 seeds, the "
                             "held-out tasks " + " ".join(HELD_OUT_30) + "; issue17: the runs before it (default)")
    parser.add_argument("--measure-charge", action="store_true",
                        help="crn: measure what one evaluation costs in training examples per task, into "
                             f"{CHARGE_FILE.name}")
    parser.add_argument("--time-trials", action="store_true",
                        help=f"crn: time one full trial per task on one thread, into {TIMINGS_FILE.name}")
    parser.add_argument("--shard", metavar="I/N", help="run only runs I, I+N, I+2N, ... of the grid (0 <= I < N): "
                                                       "one process per core, each with its own --save file")
    parser.add_argument("--commit-runs", action="store_true",
                        help="with --save: git-commit the --save file after each finished run (that file only)")
    parser.add_argument("--service-config", metavar="JSON",
                        help="crn: the service's frozen configuration, study-file sections over its defaults "
                             "(a JSON object or a file holding one; default: the defaults)")
    args = parser.parse_args(argv)
    if args.protocol == "crn":
        return crn_main(args, parser)
    if args.save and args.save.endswith(".gz"):
        parser.error("--save appends JSON lines to a plain file; gzip it afterwards (--load reads .gz)")
    optuna.logging.set_verbosity(logging.WARNING)
    args.methods = args.methods or list(METHODS)
    if set(args.methods) & set(CRN_METHODS) or (args.tasks and set(expand_tasks(args.tasks)) & set(HELD_OUT_30)):
        parser.error("crn_* methods and issue 30's tasks need --protocol crn")
    specs = QUICK if args.quick else TASKS
    names = expand_tasks(args.tasks) if args.tasks else list(DEVELOPMENT if args.quick else DEFAULT_TASKS)
    if args.quick and set(names) & set(HELD_OUT) and not args.make_reference:
        parser.error(f"--quick is a smoke run on the development tasks only; leave out {', '.join(HELD_OUT)}")
    specs = {k: v for k, v in specs.items() if k in names}
    metas: dict[str, dict] = {}
    if "char_lm" in names:
        corpus = build_corpus(args.corpus_mb)
        level = dict(CHAR_LM_LEVEL, full_trials=4 if args.quick else CHAR_LM_LEVEL["full_trials"])
        specs["char_lm"] = char_lm_spec(corpus, **level)
        metas["char_lm"] = {"corpus": corpus, "char_lm": dict(level, options=specs["char_lm"].options)}
        print(f"# char_lm corpus: {corpus['path']} sha256 {corpus['sha256']} python {corpus['python']} "
              f"{corpus['bytes']} bytes, {corpus['files']} files, skipped (not UTF-8): "
              f"{', '.join(corpus['skipped_not_utf8']) or 'none'}", flush=True)
    specs = {k: specs[k] for k in names if k in specs}
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.make_reference:
        make_reference(specs, metas)
        return
    reference = load_reference()
    if args.noise:
        measure_noise(specs, reference, metas, log=print)
        return
    n_seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    fps = {name: fingerprint(spec, metas.get(name)) for name, spec in specs.items()}
    for name, spec in specs.items():
        entry = reference.get(name)
        if entry and entry.get("fingerprint") not in (None, fingerprint(spec, metas.get(name), total=False)):
            log(f"# {name}: the reference was made at another compute level or corpus; its target is not used")
            reference.pop(name)
    grid = reference
    reference = resolve_reference(grid, load_noise(), specs, metas, args.reference, log)
    if args.compare is not None:
        labels = args.compare or list(VARIANTS)
        methods_of = {name: {v: resolve_variant(VARIANTS[v], spec) for v in labels} for name, spec in specs.items()}
    else:
        labels = list(args.methods) + ([args.service_label] if args.service_label != "service" else [])
        methods_of = {name: {m: None for m in args.methods} for name in specs}
    if args.estimate:
        done = saved_runs(args.save) if args.save else {}
        todo = [(n, label, s, fps[n]) for n in specs for label in methods_of[n] for s in seeds]
        report_estimate(specs, todo, done, print)
        noise = load_noise()
        for name, spec in specs.items():
            minutes = PRIOR_SECONDS_PER_1K.get(name, 1.5) * spec.per_trial / 60e3  # one full trial
            extra = []
            if name not in grid:
                extra.append(f"--make-reference (60 trials) about {60 * minutes:.0f} min")
            if noise_margins(noise, {name: spec}, metas)[name] is None:
                extra.append(f"--noise ({NOISE_SEEDS} trials) about {NOISE_SEEDS * minutes:.0f} min")
            if extra:
                print(f"# {name} also needs: {', '.join(extra)}")
        return
    if args.load:
        cells = load_runs(args.load, None if args.quick else fps)
    else:
        cells = run_grid(specs, seeds, {}, reference, log, args.save, metas, methods_by_task=methods_of)
    specs = {k: v for k, v in specs.items() if any(task == k for task, _ in cells)}
    for name in specs:
        if name not in reference:
            log(f"# {name}: no {args.reference} reference (--make-reference, then --noise, --tasks {name}); "
                f"its target is the best of these runs")
    reference = with_pooled_best(reference, cells, specs)
    noise = noise_margins(load_noise(), specs, metas)
    margin_sets = [(f"margin {MARGIN}", {n: MARGIN for n in specs})]
    margin_sets += [(f"margin {m}", {n: m for n in specs}) for m in args.also_margin]
    margin_sets += [("margin 2 x noise", noise)]
    groups = [("development", [n for n in specs if n not in HELD_OUT]),
              ("held-out", [n for n in specs if n in HELD_OUT])]
    for group, group_names in groups:
        if not group_names:
            continue
        sub = {n: specs[n] for n in group_names}
        print(f"\n=== {group} tasks: {', '.join(group_names)} ===")
        if args.figure:
            out = figure_path(args.figure, group)
            draw_figure(cells, sub, reference, labels, margin_sets, out, f"{group} tasks", args.service_label)
            print(f"# figure: {out}")
        for title, margins in margin_sets:
            print_table(cells, sub, reference, labels, margins, title)
            others = [v for v in labels if v != args.service_label]
            geo = speedups(cells, sub, reference, margins, args.service_label, log=print, against=others)
            if geo:
                print(f"{group} {title}: " + " ".join(f"speedup_vs_{b}={x:.2f}" for b, x in geo.items()))


# --- issue 30: --protocol crn -------------------------------------------------------------------

CHARGE_FILE = Path(__file__).resolve().parent.parent / "search_efficiency_charge.json"
TIMINGS_FILE = CHARGE_FILE.with_name("search_efficiency_timings.json")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def with_charges(specs: dict, metas: dict, charges: dict, parser) -> dict:
    """Each spec with its evaluation charge (CHARGE_FILE, measured at this per-trial level)."""
    out = {}
    for name, spec in specs.items():
        entry = charges.get(name)
        if not entry or entry.get("fingerprint") != fingerprint(spec, metas.get(name), total=False):
            parser.error(f"{name}: no evaluation charge measured at this level; run --protocol crn --measure-charge "
                         f"--tasks {name} first")
        out[name] = replace(spec, eval_charge=entry["per_evaluation"])
    return out


def git_commit() -> str | None:
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
    except OSError:
        return None
    return done.stdout.strip() or None


def service_config(raw: str | None) -> dict | None:
    if not raw:
        return None
    return without_notes(json.loads(Path(raw).read_text() if Path(raw).exists() else raw))


def without_notes(config: dict) -> dict:
    """A service config less its `_` keys (`_mechanisms`: search30_select's count), which are not
    study-file sections."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def with_horizons(specs: dict, frozen: dict | None) -> dict:
    """With `budget.horizons` in the service's configuration, each spec's evaluation points are
    those horizons (in examples, ending with per_trial): the baselines report at the service's."""
    horizons = ((frozen or {}).get("budget") or {}).get("horizons")
    if not horizons:
        return specs
    return {name: replace(spec, horizons=tuple(sorted({horizon_length(h, spec.per_trial) for h in horizons}
                                                      | {float(spec.per_trial)})))
            for name, spec in specs.items()}


def crn_main(args, parser) -> None:
    """Issue 30's protocol: --measure-charge, --time-trials, --make-reference and --noise (on the
    service's recipe), the grid (--save, --shard, --estimate) or --load, and the figures."""
    names = expand_tasks(args.tasks) if args.tasks else list(DEVELOPMENT if args.quick else HELD_OUT_30)
    if args.quick and set(names) & set(HELD_OUT_30) and not (args.measure_charge or args.time_trials):
        parser.error("--quick is a smoke run on the development tasks only; leave out the held-out tasks")
    unknown = [n for n in names if n not in HELD_OUT_30 and n not in TASKS]
    if unknown:
        parser.error(f"--protocol crn runs issue 30's held-out tasks and the development tasks, not {unknown}")
    specs, metas = issue30_specs(names, 4 if args.quick else ISSUE30_FULL_TRIALS)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.measure_charge or args.time_trials:
        path = CHARGE_FILE if args.measure_charge else TIMINGS_FILE
        saved = read_json(path)
        for name, spec in specs.items():
            entry = measure_eval_charge(spec) if args.measure_charge else time_full_trial(spec)
            saved[name] = dict(entry, fingerprint=fingerprint(spec, metas.get(name), total=False))
            print(name, json.dumps(entry), flush=True)
            path.write_text(json.dumps(saved, indent=2) + "\n")
        return
    if args.make_reference:
        make_reference(specs, metas)
        return
    grid = load_reference()
    if args.noise:
        measure_noise(specs, grid, metas, log=print, recipe=True)
        return
    specs = with_charges(specs, metas, read_json(CHARGE_FILE), parser)
    for name, timing in read_json(TIMINGS_FILE).items():  # the estimate's rates: the timed full trials
        if name in specs and timing.get("fingerprint") == fingerprint(specs[name], metas.get(name), total=False):
            spec = specs[name]
            charged = timing["examples"] + spec.evaluations_per_trial * spec.eval_charge
            PRIOR_SECONDS_PER_1K[name] = timing["seconds"] / charged * 1000
    frozen = service_config(args.service_config)
    specs = with_horizons(specs, frozen)
    for name in specs:  # what each saved run was made with: the code's commit and the service's configuration
        metas.setdefault(name, {}).update(commit=git_commit(), service_config=frozen)
    n_seeds = args.seeds if args.seeds is not None else (2 if args.quick else ISSUE30_SEEDS)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    methods = list(args.methods or CRN_GRID)
    methods_of = {name: {m: (frozen if m == CRN_SERVICE else None) for m in methods} for name in specs}
    shard = None
    if args.shard:
        i, n = (int(x) for x in args.shard.split("/"))
        if not 0 <= i < n:
            parser.error("--shard I/N needs 0 <= I < N")
        shard = (i, n)
    for name, spec in specs.items():
        entry = grid.get(name)
        if entry and entry.get("fingerprint") not in (None, fingerprint(spec, metas.get(name), total=False)):
            log(f"# {name}: the reference was made at another level; its target is not used")
            grid.pop(name)
    reference = resolve_reference(grid, load_noise(), specs, metas, args.reference, log)
    fps = {name: fingerprint(spec, metas.get(name)) for name, spec in specs.items()}
    if args.estimate:
        done = saved_runs(args.save) if args.save else {}
        todo = [(n, m, s, fps[n]) for n in specs for m in methods for s in seeds]
        report_estimate(specs, todo[shard[0] :: shard[1]] if shard else todo, done, print)
        return
    if args.load:
        cells = load_runs(args.load, fps)
    else:
        import torch

        torch.set_num_threads(1)  # one core per process: every method, the service included, trains on one thread
        cells = run_grid(specs, seeds, {}, reference, log, args.save, metas, methods_by_task=methods_of, shard=shard,
                         commit=args.commit_runs and bool(args.save))
    specs = {k: v for k, v in specs.items() if any(task == k for task, _ in cells)}
    for name in specs:
        if name not in reference:
            log(f"# {name}: no {args.reference} reference (--protocol crn --make-reference, then --noise); its "
                f"target is the best of these runs")
    reference = with_pooled_best(reference, cells, specs)
    noise = noise_margins(load_noise(), specs, metas)
    labels = [m for m in methods if any(label == m for _, label in cells)]
    baselines = [m for m in labels if m != CRN_SERVICE]
    for group, group_names in (("development", [n for n in specs if n not in HELD_OUT_30]),
                               ("held-out", [n for n in specs if n in HELD_OUT_30])):
        if not group_names:
            continue
        sub = {n: specs[n] for n in group_names}
        print(f"\n=== {group} tasks (protocol crn): {', '.join(group_names)} ===")
        margin_sets = [(f"margin {MARGIN}", {n: MARGIN for n in sub}), ("margin 2 x noise", noise)]
        for title, margins in margin_sets:
            protocol_report(cells, sub, reference, margins, f"{group} {title}", CRN_SERVICE, baselines, log=print)
        if args.figure:
            out = figure_path(args.figure, group)
            draw_share_figure(cells, sub, reference, labels, margin_sets, out, f"{group} tasks (issue 30)",
                              CRN_SERVICE)
            print(f"# figure: {out}")
