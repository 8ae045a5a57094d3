"""Issue 25: is `sweeps predict --budget 10x` right at 10x? The protocol is docs/extrapolation.md.

Per task: a 30-trial sweep with `budget.horizons` up to C_max, the prediction at 10 C_max (as
`sweeps predict` makes it), and at 10 C_max: a 6 x 7 grid over batch size and effective LR (seed
0; the 5 leading cells also seeds 1 and 2), the predicted configuration and the sweep's best
configuration reused (seeds 0, 1, 2). Printed per task: regret in seed SDs, the prediction's rank
among the grid cells, a paired test against the reused configuration, the sweep's compute over a
20-trial direct sweep at 10 C_max; then the verdict against the issue's done criteria.

    python benchmarks/extrapolation.py --save benchmarks/results/extrapolation_v2.json   # protocol v2
    python benchmarks/extrapolation.py --protocol v1 --save benchmarks/results/extrapolation.json
    python benchmarks/extrapolation.py --tasks digits teacher_onepass --quick      # smoke test

`--save FILE`: each run is written to FILE (JSON) as it finishes; a rerun with the same FILE skips
the runs saved there, so a stopped benchmark resumes (and one that finished reprints its table).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState
from scipy import stats

from objectives.training.budget import Budget, plan_trial
from sweeps.config.study_file import SweepConfig, parse_config
from sweeps.config.target import target_of
from sweeps.errors import Refusal
from sweeps.loop.runner import run_sweep
from sweeps.predict import PredictedRun, export_data, predicted_run, trials_attr
from sweeps.results.frontier import frontier, predict
from sweeps.text import table as text_table
from sweeps.trial.record import TrialRecord, consumed

WARMUP = 0.05  # the sweep's fixed warmup share, also the grid's and the reused configuration's
DIRECT_TRIALS, MAX_RATIO, REACH = 20, 0.2, 10
MAX_REGRET, TOP_SHARE, PAIRED_LEVEL, MIN_SHARE = 2.0, 0.10, 0.10, 0.75  # hits on 3 of 4 tasks, 5 of 6


@dataclass(frozen=True)
class Spec:
    name: str
    role: str  # development | held_out
    task: str
    options: dict
    c_max: int  # examples
    metric: str = "val_accuracy"
    maximize: bool = True


# protocol v2's generated corpus for `lm_onepass` (objectives/tasks/samples.py: deterministic from its seed)
CORPUS = Path(tempfile.gettempdir()) / "sweeps-extrapolation" / "corpus_3M_seed7.txt"
CORPUS_CHARS, CORPUS_SEED = 3_000_000, 7

V1_TASKS = (
    Spec("digits", "development", "digits_mlp", {}, 8000),
    Spec("teacher_onepass", "development", "teacher_mlp", {"n_train": 100000, "n_val": 2048}, 8000),
    Spec("teacher_wide", "held_out", "teacher_mlp", {"dim": 16, "classes": 8, "n_train": 4096, "n_val": 2048,
                                                     "width": 128, "depth": 3, "label_noise": 0.1, "data_seed": 1},
         8192),
    Spec("regression_onepass", "held_out", "regression", {"dim": 64, "n_train": 100000, "n_val": 2048,
                                                          "noise": 0.5, "data_seed": 0}, 8000, "val_mse", False),
)
# protocol v2 (docs/extrapolation.md): v1's four tasks are development tasks, two new ones held out
V2_TASKS = (
    *(replace(s, role="development") for s in V1_TASKS),
    Spec("digits_cnn", "held_out", "digits_cnn", {"channels": 8}, 8000),
    Spec("lm_onepass", "held_out", "char_lm", {"path": str(CORPUS), "block_size": 16, "n_layer": 1, "n_head": 2,
                                               "n_embd": 32}, 8000, "val_loss", False),
)
PROTOCOLS = {"v1": {s.name: s for s in V1_TASKS}, "v2": {s.name: s for s in V2_TASKS}}
TASKS = PROTOCOLS["v2"]


def ensure_corpus(specs: Sequence[Spec]) -> None:
    """Write the generated corpus `lm_onepass` reads, unless it is there."""
    if any(s.options.get("path") == str(CORPUS) for s in specs) and not CORPUS.is_file():
        from objectives.tasks.samples import write_text

        write_text(str(CORPUS), CORPUS_CHARS, seed=CORPUS_SEED)


@dataclass(frozen=True)
class Setting:
    n_trials: int = 30
    grid_batch: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    grid_lr: tuple[float, ...] = tuple(10 ** (-3 + 0.5 * i) for i in range(7))
    leading: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    prefix: str = ""


QUICK = Setting(n_trials=12, grid_batch=(16, 64, 256), grid_lr=(10**-2.5, 10**-1.5, 10**-0.5), leading=2,
                seeds=(0, 1), prefix="quick:")


# --- the analysis (tests/test_extrapolation_benchmark.py) -------------------------------------------

def score(value: float | None, maximize: bool) -> float:
    """Larger is better; a run without a value is the worst."""
    if value is None or not math.isfinite(value):
        return -math.inf
    return value if maximize else -value


def mean(values: Sequence[float | None], maximize: bool) -> float | None:
    """The mean over seeds; None (the worst) when any run has no value."""
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return statistics.fmean(values)


def pooled_sd(groups: Sequence[Sequence[float | None]]) -> float:
    """sqrt(mean sample variance) over the groups of >= 2 finite values."""
    variances = [statistics.variance(g) for g in groups
                 if len(g) >= 2 and all(v is not None and math.isfinite(v) for v in g)]
    return math.sqrt(statistics.fmean(variances)) if variances else math.nan


def regret(best: float, predicted: float | None, sd: float, maximize: bool) -> float:
    """(true best - prediction) in seed SDs, positive when the prediction is worse."""
    if predicted is None:
        return math.inf
    return (score(best, maximize) - score(predicted, maximize)) / sd


def rank(predicted: float | None, cells: Sequence[float | None], maximize: bool) -> int:
    """1 + the number of cells strictly better than the prediction."""
    mine = score(predicted, maximize)
    return 1 + sum(score(c, maximize) > mine for c in cells)


def in_top(rank_: int, n_cells: int, share: float = TOP_SHARE) -> bool:
    return rank_ - 1 <= share * n_cells + 1e-9


def paired_worse(predicted: Sequence[float | None], reused: Sequence[float | None], maximize: bool,
                 level: float = PAIRED_LEVEL) -> tuple[float, float, bool]:
    """(mean of d, one-sided p of "the prediction is worse", worse at `level`); d = s (pred - reused)."""
    d = [score(p, maximize) - score(r, maximize) for p, r in zip(predicted, reused, strict=True)]
    if any(math.isnan(x) for x in d):  # both without a value
        d = [0.0 if math.isnan(x) else x for x in d]
    mean_d = statistics.fmean(d)
    if any(math.isinf(x) for x in d) or len(set(d)) == 1:
        p = 0.0 if mean_d < 0 else 1.0
    else:
        t = mean_d / (statistics.stdev(d) / math.sqrt(len(d)))
        p = float(stats.t.cdf(t, df=len(d) - 1))
    return mean_d, p, p < level


def nearest(batch_size: float, lr: float, cells: Sequence[tuple[int, float]]) -> tuple[int, float]:
    return min(cells, key=lambda c: (math.log2(c[0] / batch_size)) ** 2 + (math.log10(c[1] / lr)) ** 2)


@dataclass
class Row:
    task: str
    role: str
    refusal: str | None = None
    regret: float = math.nan
    rank: int = 0
    n_cells: int = 0
    nearest_rank: int = 0
    mean_d: float = math.nan
    p: float = math.nan
    worse: bool = False
    ratio: float = math.nan
    details: dict = field(default_factory=dict)

    @property
    def top(self) -> bool:
        return self.refusal is None and self.n_cells > 0 and in_top(self.rank, self.n_cells)

    @property
    def hit(self) -> bool:
        return self.refusal is None and self.regret <= MAX_REGRET and self.top


def verdict(rows: Sequence[Row], n_tasks: int = 4) -> list[tuple[str, bool, str]]:
    """The three done criteria: (name, met, what was measured)."""
    hits = [r.task for r in rows if r.hit]
    worse = [r.task for r in rows if r.worse or r.refusal is not None]
    costly = [r.task for r in rows if not r.ratio <= MAX_RATIO]
    need = math.ceil(MIN_SHARE * n_tasks)
    return [
        (f"within {MAX_REGRET:g} seed SDs and top {TOP_SHARE:.0%} on >= {need} of {len(rows)} tasks",
         len(hits) >= need and len(rows) >= n_tasks, f"{len(hits)}: {', '.join(hits) or 'none'}"),
        (f"never worse than the reused configuration (paired, one-sided, {PAIRED_LEVEL:.0%})",
         not worse, f"worse or refused on: {', '.join(worse) or 'none'}"),
        (f"sweep compute <= {MAX_RATIO:g} of a {DIRECT_TRIALS}-trial direct sweep at {REACH} C_max", not costly,
         "ratios " + ", ".join(f"{r.task} {r.ratio:.3f}" for r in rows)),
    ]


# --- the runs --------------------------------------------------------------------------------------

class Saved:
    """The runs of one --save file: {key: record}; written after each run (atomically)."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.runs: dict[str, dict] = {}
        if self.path and self.path.exists():
            self.runs = json.loads(self.path.read_text())["runs"]

    def get(self, key: str, make: Callable[[], dict]) -> dict:
        if key not in self.runs:
            started = time.perf_counter()
            record = make()
            record["wall_s"] = round(time.perf_counter() - started, 2)
            self.runs[key] = record
            print(f"  {key}: {short(record)} ({record['wall_s']:.1f}s)", flush=True)
            if self.path:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"protocol": "docs/extrapolation.md", "runs": self.runs}, indent=1))
                os.replace(tmp, self.path)
        return self.runs[key]


def short(record: dict) -> str:
    if "value" in record:
        return f"value {record['value']}"
    return f"refused: {record['refusal']}" if record.get("refusal") else f"predicted {record['prediction']}"


def sweep_data(spec: Spec, setting: Setting, folder: str) -> dict:
    return {
        "study": {"name": spec.name, "storage": f"sqlite:///{folder}/sweep.db", "metric": spec.metric,
                  "direction": "maximize" if spec.maximize else "minimize", "n_trials": setting.n_trials, "seed": 0},
        "sampler": {"name": "tpe", "n_startup_trials": 10},
        "pruner": {"name": "none"},
        # one trial at a time, as when the protocol was fixed (horizons do not fuse)
        "objective": {"task": spec.task, "optimizer": "sgd", "options": dict(spec.options), "fuse": "off"},
        "budget": {"unit": "examples", "per_trial": spec.c_max, "eval_every": spec.c_max / 16,
                   "horizons": ["0.125x", "0.25x", "0.5x"]},
        "search": {"batch_size": {"low": 16, "high": 256, "log": True, "power_of_two": True},
                   "base_lr": {"low": 1e-3, "high": 1.0, "log": True}, "coupling": "none", "warmup_fraction": WARMUP},
        "dashboard": {"keep_checkpoints": 0, "notes": False},
    }


def sweep(spec: Spec, setting: Setting) -> dict:
    """The small sweep and what it gives: the prediction at 10 C_max (or the refusal), the best trial."""
    with tempfile.TemporaryDirectory() as folder:
        config = parse_config(sweep_data(spec, setting, folder), folder)
        study = run_sweep(config, target_of(config), show_progress=False)
        trials = study.get_trials(deepcopy=False)
        best = TrialRecord.of(study.best_trial)
        record = {"compute": sum(consumed(t, "examples") for t in trials), "n_trials": len(trials),
                  "n_train": trials_attr(trials, "n_train"), "refusal": None, "prediction": None,
                  "best": {"trial": study.best_trial.number, "value": study.best_value,
                           "batch_size": best.batch_size, "lr": best.lr}}
        try:
            front = frontier(trials, spec.maximize, seed=config.study.seed)
            prediction = predict(front, REACH * spec.c_max)
        except Refusal as err:
            record["refusal"] = str(err)
            return record
        record["prediction"] = predicted_run(front, prediction, config, trials).attrs()
        record["laws"] = {"batch_exponent": front.batch_law.slope, "lr_exponent": front.lr_law.slope}
        return record


def run_at(spec: Spec, config: SweepConfig, n_train: int, batch_size: int, lr: float) -> PredictedRun:
    """A configuration at 10 C_max as `export_data` takes it, warmup WARMUP of its planned updates."""
    target = REACH * spec.c_max
    planned = plan_trial(Budget("examples", target, float(config.budget.eval_every)), n_train, batch_size,
                         None, config.objective.drop_last).planned_updates
    return PredictedRun(target, REACH, batch_size, lr, lr, "none", round(WARMUP * planned), planned,
                        math.nan, math.nan, math.nan, float(batch_size))


def train(spec: Spec, config: SweepConfig, run: PredictedRun, seed: int) -> dict:
    """One run at 10 C_max: the one-trial study `sweeps predict --export` writes, with this seed."""
    with tempfile.TemporaryDirectory() as folder:
        data = export_data(run, config, spec.name, Path(folder))
        data["study"].update(storage=f"sqlite:///{folder}/run.db", training_seed=seed)
        big = parse_config(data, folder)
        trial = run_sweep(big, target_of(big), show_progress=False).trials[0]
        value = trial.value if trial.state == TrialState.COMPLETE else None
        return {"batch_size": run.batch_size, "lr": run.lr, "seed": seed, "value": value,
                "examples": consumed(trial, "examples")}


def run_task(spec: Spec, setting: Setting, saved: Saved) -> dict:
    """Every run of one task, in the order: sweep, predicted, reused, grid seed 0, leading cells."""
    key = f"{setting.prefix}{spec.name}"
    print(f"{spec.name} ({spec.role}):", flush=True)
    swept = saved.get(f"{key}/sweep", lambda: sweep(spec, setting))
    with tempfile.TemporaryDirectory() as folder:
        config = parse_config(sweep_data(spec, setting, folder), folder)
    n_train = swept["n_train"]
    out: dict = {"sweep": swept, "predicted": [], "reused": [], "grid": {}}
    if swept["prediction"] is not None:
        predicted = PredictedRun(**swept["prediction"])
        out["predicted"] = [saved.get(f"{key}/predicted/s{s}", lambda s=s: train(spec, config, predicted, s))
                            for s in setting.seeds]
    best = swept["best"]
    reused = run_at(spec, config, n_train, best["batch_size"], best["lr"])
    out["reused"] = [saved.get(f"{key}/reused/s{s}", lambda s=s: train(spec, config, reused, s))
                     for s in setting.seeds]
    cells = [(b, lr) for b in setting.grid_batch for lr in setting.grid_lr]

    def cell(b: int, lr: float, s: int) -> dict:
        return saved.get(f"{key}/grid/b{b}/lr{lr:.4g}/s{s}", lambda: train(spec, config, run_at(
            spec, config, n_train, b, lr), s))

    first = {c: cell(*c, setting.seeds[0]) for c in cells}
    leading = sorted(cells, key=lambda c: -score(first[c]["value"], spec.maximize))[:setting.leading]
    for c in cells:
        out["grid"][c] = [first[c]] + ([cell(*c, s) for s in setting.seeds[1:]] if c in leading else [])
    out["leading"] = leading
    return out


# --- the report ------------------------------------------------------------------------------------

def analyse(spec: Spec, runs: dict) -> Row:
    swept, maximize = runs["sweep"], spec.maximize
    row = Row(spec.name, spec.role, refusal=swept["refusal"],
              ratio=swept["compute"] / (DIRECT_TRIALS * REACH * spec.c_max))
    values = {c: [r["value"] for r in rs] for c, rs in runs["grid"].items()}
    reused = [r["value"] for r in runs["reused"]]
    cell_means = {c: mean(v, maximize) for c, v in values.items()}
    best_cell = max(runs["leading"], key=lambda c: score(cell_means[c], maximize))
    row.n_cells = len(values)
    row.details = {"best_cell": best_cell, "best": cell_means[best_cell], "reused_cfg": (
        swept["best"]["batch_size"], swept["best"]["lr"]), "reused": mean(reused, maximize)}
    if row.refusal is not None:
        return row
    predicted = [r["value"] for r in runs["predicted"]]
    groups = [values[c] for c in runs["leading"]] + [predicted, reused]
    sd = pooled_sd(groups)
    pred_mean = mean(predicted, maximize)
    p = swept["prediction"]
    row.regret = regret(cell_means[best_cell], pred_mean, sd, maximize)
    row.rank = rank(pred_mean, list(cell_means.values()), maximize)
    near = nearest(p["batch_size"], p["lr"], list(values))
    row.nearest_rank = 1 + sum(score(m, maximize) > score(cell_means[near], maximize) for m in cell_means.values())
    row.mean_d, row.p, row.worse = paired_worse(predicted, reused, maximize)
    row.details.update(sd=sd, predicted=pred_mean, predicted_cfg=(p["batch_size"], p["lr"]), nearest=near)
    return row


def fmt_cfg(cfg) -> str:
    return f"B{cfg[0]} lr{cfg[1]:.3g}"


def table(rows: Sequence[Row]) -> str:
    out = []
    for r in rows:
        d = r.details
        refused = r.refusal is not None
        out.append({"task": r.task, "role": r.role, "predicted": "refused" if refused else fmt_cfg(d["predicted_cfg"]),
                    "pred_mean": None if refused else d["predicted"], "best_cell": fmt_cfg(d["best_cell"]),
                    "best_mean": d["best"], "seed_sd": d.get("sd"), "regret_sd": None if refused else r.regret,
                    "rank": None if refused else f"{r.rank}/{r.n_cells}",
                    "nearest_rank": None if refused else r.nearest_rank,
                    "reused": fmt_cfg(d["reused_cfg"]), "reused_mean": d["reused"],
                    "d_mean": None if refused else r.mean_d, "p_worse": None if refused else r.p,
                    "compute_ratio": r.ratio, "hit": r.hit})
    return text_table(out)


def report(specs: Sequence[Spec], results: dict[str, dict], n_tasks: int) -> None:
    rows = [analyse(s, results[s.name]) for s in specs if s.name in results]
    print("\n" + table(rows))
    for r in rows:
        if r.refusal:
            print(f"{r.task}: sweeps predict refused: {r.refusal}")
    for role in ("development", "held_out"):
        hits = [r.task for r in rows if r.role == role and r.hit]
        print(f"{role}: {len(hits)} of {sum(r.role == role for r in rows)} tasks within {MAX_REGRET:g} SDs and top "
              f"{TOP_SHARE:.0%}")
    print("verdict:")
    for name, met, what in verdict(rows, n_tasks):
        print(f"  [{'met' if met else 'NOT met'}] {name}: {what}")
    print("command: python " + " ".join(sys.argv))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="v2",
                        help="v1: the first round's 4 tasks and roles; v2: those as development, 2 new held out")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), help="a subset of the protocol's tasks")
    parser.add_argument("--save", help="JSON file: each run saved as it finishes; a rerun resumes")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke setting (not results)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(logging.WARNING)
    tasks = PROTOCOLS[args.protocol]
    setting, saved = (QUICK if args.quick else Setting()), Saved(args.save)
    specs = [tasks[n] for n in (args.tasks or tasks)]
    ensure_corpus(specs)
    started = time.perf_counter()
    results = {s.name: run_task(s, setting, saved) for s in specs}
    print(f"wall {time.perf_counter() - started:.0f}s this invocation; "
          f"{sum(r['wall_s'] for r in saved.runs.values()):.0f}s in all saved runs")
    report(specs, results, n_tasks=len(tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
