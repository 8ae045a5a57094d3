"""`python -m sweeps.report STUDY.yaml [--out DIR]`: what the sweep found, in the terminal and in files.

Prints the short answer first (the settings to train with, the value to expect and its spread,
the caveat that matters, the command to run next), then why (how the LR moves with batch size,
where batch size stops paying), the best trials, the LR-vs-batch-size slope and the critical batch size; writes
`report.html` (interactive plotly), one PNG per figure and `report.png` (all of them), and `summary.json` (the numbers).
With `budget.horizons`, a section (table, `horizons.png`, `summary.json`'s `horizons`) gives per horizon
its best value, the best so far at it or a shorter one, and what all trials trained to answer every
horizon up to it: the best value against compute (`sweeps.results.horizons.best_against_compute`);
another the optimum per horizon and the laws against compute that `sweeps predict` extrapolates
(or why they cannot be fitted yet), and what `sweeps predict --verify` measured, when it ran.
Exit codes: 0 written, 1 no finished trial yet, 2 invalid study file, 3 store not there or not
readable, 4 no such study in the store.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import sys
import textwrap

import optuna

from sweeps import exits
from sweeps.cli import add_study_arguments, fail, run_command, study_arguments_text
from sweeps.config.locations import report_folder
from sweeps.config.plan import plan_rows
from sweeps.config.study_file import SweepConfig
from sweeps.confirmation.confirmed import companion_of, report_lines
from sweeps.results.analysis import StudyAnalysis, analyse
from sweeps.results.existing import load, open_existing, ran_with
from sweeps.results.figures import figures_of
from sweeps.results.noise import disagreement
from sweeps.results.recommendation import answer, answer_lines, reasoning, recommendation
from sweeps.search.prior import stored_prior
from sweeps.text import number, table
from sweeps.trial.record import PREDICT_STUDY_ATTR, TrialRecord


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sweeps report",
                                     description="Report what a sweep found: tables, report.html and PNG figures.",
                                     epilog="example:\n  sweeps report study.yaml --top 5 --out report/\n",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--out", help="output folder (default: <study name>-report beside the SQLite store, "
                                          "or beside the study file for a server store)")
    parser.add_argument("--top", type=int, default=10, help="rows of the best-trials table (default 10)")
    parser.add_argument("--target", type=float,
                        help="metric value for steps-to-target (default: the 90th percentile of finished values)")
    parser.add_argument("--tolerance", type=float,
                        help="how far below its batch size's best a trial may be and still count as good for the "
                             "LR fit and the expected metric, in metric units (default: 1%% of the range of "
                             "finished values)")
    return parser.parse_args(argv)


def html_table(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(number(v))}</td>" for v in r.values())
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summary_lines(a: StudyAnalysis) -> list[str]:
    c = a.counts
    lines = [f"study {a.study_name}: {c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, "
             f"{c.get('fail', 0)} failed; {'maximize' if a.maximize else 'minimize'} {a.metric}",
             a.lr_fit.sentence(), *a.lr_fit.notes()]
    if a.target is not None:
        quant = "" if a.target_quantile is None else f" (the {100 * a.target_quantile:.0f}th percentile)"
        steps = ", ".join(f"B={b}: {u}" for b, u, _ in a.steps_to_target) or "no trial reached it"
        lines.append(f"updates to reach {a.metric} {a.target:.4g}{quant}, interpolated between evaluations: {steps}")
    lines += critical_lines(a)
    return lines


def critical_lines(a: StudyAnalysis) -> list[str]:
    """B_crit from both methods, and the warning when they disagree."""
    lines = [] if a.critical is None else [a.critical.sentence(a.metric)]
    if a.noise is not None:
        lines += a.noise.lines()
    warn = disagreement(a.critical.value if a.critical and a.critical.determined else None, a.noise)
    if warn:
        lines.append(f"warning: {warn}")
    return lines


def horizon_lines(a: StudyAnalysis) -> list[str]:
    """With budget.horizons: the best value against the compute spent, per horizon (the title, the table)."""
    if not a.horizons:
        return []
    return [f"best value against compute over all horizons (spent: the {a.budget_unit} all trials trained to answer "
            "every horizon up to each; best_so_far: at it or a shorter one):",
            table([p.row(a.metric, a.budget_unit) for p in a.horizons])]


def law_lines(study: optuna.Study, config: SweepConfig) -> list[str]:
    """With budget.horizons: the optimum per horizon and the laws against compute (`sweeps
    predict`'s, or why they cannot be fitted yet), then a prediction's measured runs, if any."""
    if config.budget.horizons is None:
        return []
    from sweeps.errors import Refusal
    from sweeps.predict import comparison_text, frontier_text, measured, stored_prediction
    from sweeps.results.frontier import frontier

    try:
        lines = [frontier_text(frontier(study.get_trials(deepcopy=False), config.study.direction == "maximize",
                                        seed=config.study.seed), config, study.study_name)]
    except Refusal as err:
        lines = [f"laws against compute (sweeps predict): not fitted yet: {err}"]
    companion = companion_of(study, PREDICT_STUDY_ATTR)
    stored = stored_prediction(companion) if companion is not None else None
    if stored is not None:
        lines += ["", "the prediction of `sweeps predict --verify`, trained:",
                  comparison_text(stored, measured(companion), config.study.metric, config.budget.unit)]
    return lines


def summary_json(a: StudyAnalysis, short: dict[str, str], plan: list[dict] | None = None) -> dict:
    """The numbers; `short`: the short answer; `plan`: the budget plan per batch size, from the config
    the study ran with."""
    fit, crit, noise = a.lr_fit, a.critical, a.noise
    out = {
        "study": a.study_name, "metric": a.metric, "direction": "maximize" if a.maximize else "minimize",
        "counts": a.counts, "best_trials": a.best_table(),
        "answer": short, "recommendation": recommendation(a),
        "confirmed": [r.row() for r in a.confirmed],  # `sweeps confirm`'s runs, per configuration
        "lr_scaling": {"slope": fit.slope, "ci_half_width": fit.half_width, "confidence": fit.confidence,
                       "interval": fit.interval, "covered_rules": fit.covered_rules, "rule": fit.rule,
                       "verdict": fit.verdict(), "tolerance": fit.tolerance, "batch_sizes": fit.batch_sizes,
                       "lrs": fit.lrs, "trials": fit.trial_numbers,
                       "left_out": {str(b): v for b, v in fit.left_out.items()}, "far": fit.far},
        "target": a.target, "steps_to_target": [{"batch_size": b, "updates": r.updates, "examples": r.examples,
                                                 "trial": r.trial, "at_first_evaluation": r.at_first_evaluation}
                                                for b, r in (crit.reached.items() if crit else [])],
        "critical_batch_size": {
            "from_steps": None if crit is None else {"b_crit": crit.b_crit, "interval": crit.interval,
                                                     "s_min": crit.s_min, "e_min": crit.e_min,
                                                     "batch_sizes": crit.fitted, "not_reached": crit.not_reached},
            "from_noise_scale": None if noise is None else {
                "median": noise.median, "low": noise.low, "high": noise.high, "trials": noise.n,
                "statistic": noise.statistic, "determined": noise.determined, "early": noise.early,
                "late": noise.late, "changed": noise.changed},
        },
        "examples_per_second": {str(b): v for b, v in a.throughput.items()},
        "best_by_batch_size": {rule: [{"batch_size": b, "value": v, "trial": n} for b, v, n in pts]
                               for rule, pts in a.best_by_batch.items()},
        "importances": a.importances,
        "budget_plan": plan,
    }
    if a.horizons:  # with budget.horizons: the best value against compute, per horizon
        out["horizons"] = [dataclasses.asdict(p) for p in a.horizons]
    return out


def tokens_per_example_of(a: StudyAnalysis) -> int | None:
    for t in a.complete:
        tokens = TrialRecord.of(t).tokens_per_example
        if tokens:
            return int(tokens)
    return None


def n_train_of(a: StudyAnalysis) -> int | None:
    for t in a.complete:
        n_train = TrialRecord.of(t).n_train
        if n_train:
            return int(n_train)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: report(args), args.study_file)


def report(args: argparse.Namespace) -> int:
    existing = open_existing(args.study_file, args.storage, args.study_name)
    study = load(existing)
    if args.tolerance is not None and args.tolerance < 0:
        return fail(exits.USAGE, f"--tolerance must be >= 0 (got {args.tolerance}): a metric distance below a "
                                 "batch size's best")
    a = analyse(study, target=args.target, tolerance=args.tolerance)
    if args.target is not None:
        a.target_quantile = None
    if not a.complete:
        states = ", ".join(f"{n} {s}" for s, n in a.counts.items() if n) or "no trials"
        return fail(exits.FAILED, f"study {study.study_name!r} has no finished trial with a value yet ({states}): "
                                  f"nothing to report; run `sweeps run {args.study_file}`")

    config = ran_with(existing, study)  # not the file's: what the study ran with
    out = report_folder(config, existing.target.storage_url, existing.target.study_name, args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_train = n_train_of(a)
    tokens = tokens_per_example_of(a)
    plan = plan_rows(config, n_train, tokens) if n_train else None
    figures = figures_of(a, config, n_train, tokens)

    best_rows = a.best_table(args.top)
    short, why = answer(a, study_arguments_text(args)), f"Why: {reasoning(a)}"
    print("\n".join(answer_lines(short)) + "\n")
    print(textwrap.fill(why, width=100) + "\n")
    print(f"best {len(best_rows)} trials of {len(a.complete)} complete:")
    print(table(best_rows))
    print()
    for line in summary_lines(a):
        print(line)
    prior = stored_prior(study)  # search.lr_range_test: what the search was centred on
    if prior is not None:
        print(f"searched with a measured prior: {prior.line()}")
    horizons = horizon_lines(a)
    if horizons:
        print("\n" + "\n".join(horizons))
    laws = law_lines(study, config)  # with horizons: the optima and laws, and a verified prediction
    if laws:
        print("\n" + "\n".join(laws))
    confirmed = report_lines(study)  # the confirmation runs of `sweeps confirm`, when there are any
    if confirmed:
        print("\n" + "\n".join(confirmed))

    from sweeps.results.figures import write_html
    from sweeps.results.pngs import write_pngs

    summary = ("<p>" + "<br>".join(f"<b>{html.escape(key.title())}:</b> {html.escape(text)}"
                                   for key, text in short.items()) + f"</p><p>{html.escape(why)}</p>"
               + "".join(f"<p>{html.escape(line)}</p>" for line in summary_lines(a)) + html_table(best_rows))
    if a.horizons:
        summary += (f"<p>{html.escape(horizons[0])}</p>"
                    + html_table([p.row(a.metric, a.budget_unit) for p in a.horizons]))
    summary += f"<pre>{html.escape(chr(10).join(laws))}</pre>" if laws else ""
    summary += f"<pre>{html.escape(chr(10).join(confirmed))}</pre>" if confirmed else ""
    write_html(out / "report.html", a, figures, summary)
    pngs = write_pngs(out, a, plan)
    document = summary_json(a, short, plan)
    if prior is not None:
        document["lr_prior"] = prior.to_attrs()
    (out / "summary.json").write_text(json.dumps(document, indent=2, default=str))
    print(f"\nwrote {out / 'report.html'}, {len(pngs)} PNG figures and summary.json to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
