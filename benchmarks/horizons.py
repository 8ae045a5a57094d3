"""Horizons benchmark (issue 24): one sweep with 4 horizons against 4 separate sweeps, one per horizon.

The protocol is docs/horizons_benchmark.md (fixed before the runs). Per task and seed (study.seed s,
paired across arms), two arms with the same search space, sampler (TPE), pruner (Hyperband,
reduction factor 2), schedule (wsd, decay 0.2, warmup 0 updates), evaluation grid (every
per_trial/16 examples) and number of trials:

- horizons: one sweep with budget.per_trial = P and budget.horizons [P/8, P/4, P/2] (P the 4th);
- separate: 4 sweeps, budget.per_trial = h for each horizon h, no horizons.

A length-h run trained with the same configuration and trial number is the same run in both arms
(the horizon's branch is bit-identical to the dedicated run), so the arms differ only in which
configurations the search tries, what the pruner sees, and what the compute buys.

Best value at horizon h, per sweep: the best over every run of length h the sweep trained to its
end (a horizon record of any trial in the horizons arm; in the separate arm a trial that trained
all its planned updates, or stopped by itself by diverging), of that run's best evaluation. The
separate arm's product view (study.best_value: COMPLETE trials only) is printed beside it.
Compute: `sweeps.trial.record.consumed(trial, "examples")` summed over the sweep's trials
(branches included). Pass per (task, horizon): mean over seeds of (horizons best - separate best)
>= -2 x the seed SD of the separate best; compute ratio per task = sum of the horizons sweeps'
totals / sum of the separate sweeps' totals, pass if <= 0.5. Verdict: every row and ratio passes.

    python benchmarks/horizons.py --save benchmarks/results/horizons.json
    python benchmarks/horizons.py --seeds 1 --n-trials 6 --tasks digits_mlp      # smoke

`--save PATH` rewrites PATH (JSON) after each finished sweep; a rerun with the same PATH skips the
sweeps it holds (same task, seed, arm, length, trials and setup), so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
from scipy import stats

from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.loop.runner import run_sweep
from sweeps.trial.record import TrialRecord, consumed, horizons_of

FRACTIONS = (0.125, 0.25, 0.5, 1.0)  # the 4 horizons, as fractions of per_trial (the last is per_trial)
EVALS_PER_TRIAL = 16  # eval_every = per_trial / 16: every horizon lies on the grid, the shortest has 2
STUDY_NAME = "horizons-bench"  # the same in every sweep: Hyperband's bracket of a trial hashes name and number
MAX_RATIO = 0.5
SD_FACTOR = 2.0


@dataclass(frozen=True)
class Setup:
    """One task's sweep settings, the same in both arms but for the budget."""

    task: str
    per_trial: int  # examples: the longest horizon
    n_train: int
    metric: str = "val_accuracy"
    direction: str = "maximize"
    fractions: tuple[float, ...] = FRACTIONS
    eval_every: int | None = None  # default per_trial / EVALS_PER_TRIAL
    search: dict = field(default_factory=lambda: {
        "batch_size": {"low": 16, "high": 512, "log": True, "power_of_two": True},
        "base_lr": {"low": 1.0e-3, "high": 1.0, "log": True},
    })
    sampler: dict = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict = field(default_factory=lambda: {"name": "hyperband", "reduction_factor": 2})
    schedule: dict = field(default_factory=lambda: {"name": "wsd", "warmup_updates": 0})

    @property
    def every(self) -> int:
        return self.eval_every or self.per_trial // EVALS_PER_TRIAL

    @property
    def lengths(self) -> list[float]:
        return [float(f * self.per_trial) for f in self.fractions]

    def fingerprint(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# per_trial: 20 epochs of each task's training set (digits: 1438 examples, 28,800 = 16 x 1,800;
# teacher: 4096, 81,920 = 16 x 5,120), as benchmarks/search_efficiency.py's per-trial budgets
SETUPS = {
    "digits_mlp": Setup("digits_mlp", per_trial=28_800, n_train=1438),
    "teacher_mlp": Setup("teacher_mlp", per_trial=81_920, n_train=4096),
}
DEFAULT_SEEDS = 6
DEFAULT_TRIALS = 30
# seconds per 1000 examples consumed, one sweep on 2 shared cores (measured in the smoke runs; the
# estimate switches to the measured rate once a unit of the task has run)
PRIOR_SECONDS_PER_1K = {"digits_mlp": 0.045, "teacher_mlp": 0.013}


# --- one sweep --------------------------------------------------------------------------------------

def study_data(setup: Setup, seed: int, n_trials: int, storage: str, length: float | None) -> dict:
    """The study file of one sweep: the horizons arm when `length` is None, else the separate
    sweep at `length` examples."""
    budget: dict = {"unit": "examples", "eval_every": setup.every}
    if length is None:
        budget["per_trial"] = setup.per_trial
        budget["horizons"] = [f"{f:g}x" for f in setup.fractions if f != 1.0]
    else:
        budget["per_trial"] = int(length)
    return {
        "study": {"name": STUDY_NAME, "storage": storage, "direction": setup.direction, "metric": setup.metric,
                  "n_trials": n_trials, "seed": seed},
        "sampler": dict(setup.sampler),
        "pruner": dict(setup.pruner),
        # one trial at a time in both arms (horizons do not fuse), as when the protocol was fixed
        "objective": {"task": setup.task, "optimizer": "sgd", "fuse": "off"},
        "budget": budget,
        "schedule": dict(setup.schedule),
        "search": json.loads(json.dumps(setup.search)),
        "dashboard": {"notes": False, "keep_checkpoints": 0},
    }


def finite(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def trial_summary(trial: optuna.trial.FrozenTrial, length: float | None, sign: float) -> dict:
    """What the analysis needs of one trial: its cost, and each run of a length it trained to the
    end (`runs`: length -> that run's best evaluation)."""
    attrs = trial.user_attrs
    runs: dict[str, float] = {}
    if length is None:  # the horizons arm: every horizon recorded (a pruned trial records the finished ones)
        for h in horizons_of(TrialRecord.of(trial)):
            if h.value is not None and math.isfinite(h.value):
                runs[f"{h.length:g}"] = h.value
    else:
        planned, updates = attrs.get("planned_updates"), attrs.get("updates")
        reason = attrs.get("stop_reason")
        trained_out = planned is not None and updates is not None and updates >= planned
        values = finite(trial.intermediate_values.values())
        if values and (trained_out or reason in ("budget", "diverged", "early_stopping")):
            runs[f"{length:g}"] = max(values, key=lambda v: sign * v)
    value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None
    return {"number": trial.number, "state": trial.state.name, "params": trial.params,
            "consumed": consumed(trial, "examples"), "stop_reason": attrs.get("stop_reason"),
            "runs": runs, "complete_value": value}


def run_unit(setup: Setup, seed: int, n_trials: int, length: float | None) -> dict:
    """One sweep in a temporary SQLite store: the horizons arm (`length` None) or the separate
    sweep at `length`; returns its summary."""
    sign = 1.0 if setup.direction == "maximize" else -1.0
    with tempfile.TemporaryDirectory(prefix="hbench-") as folder:
        config = parse_config(study_data(setup, seed, n_trials, f"sqlite:///{folder}/study.db", length), folder)
        started = time.perf_counter()
        study = run_sweep(config, target_of(config), show_progress=False)
        wall = time.perf_counter() - started
        trials = [trial_summary(t, length, sign) for t in sorted(study.trials, key=lambda t: t.number)]
    return {"task": setup.task, "seed": seed, "arm": "horizons" if length is None else "separate",
            "length": float(setup.per_trial if length is None else length), "n_trials": n_trials,
            "setup": setup.fingerprint(), "wall": round(wall, 2),
            "total": sum(t["consumed"] for t in trials), "trials": trials}


def unit_key(task: str, seed: int, arm: str, length: float, n_trials: int, setup: str) -> tuple:
    return task, seed, arm, float(length), n_trials, setup


def key_of(unit: dict) -> tuple:
    return unit_key(unit["task"], unit["seed"], unit["arm"], unit["length"], unit["n_trials"], unit["setup"])


# --- saving -----------------------------------------------------------------------------------------

def load_units(path: str | None) -> list[dict]:
    if not path or not Path(path).exists():
        return []
    return json.loads(Path(path).read_text())["units"]


def save_units(path: str, units: list[dict], meta: dict) -> None:
    """The whole file rewritten, through a temporary file, so a stop mid-write leaves the last one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"benchmark": "horizons", "meta": meta, "units": units}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def plan_units(setups: Sequence[Setup], seeds: Sequence[int], n_trials: int) -> list[tuple[Setup, int, float | None]]:
    """Seed by seed (a stopped run leaves whole seeds), each task's horizons sweep, then its separate ones."""
    return [(setup, seed, length) for seed in seeds for setup in setups
            for length in (None, *setup.lengths)]


def run_all(setups: Sequence[Setup], seeds: Sequence[int], n_trials: int, save: str | None = None,
            meta: dict | None = None, log: Callable[[str], None] = print) -> list[dict]:
    units = load_units(save)
    done = {key_of(u): u for u in units}
    todo = plan_units(setups, seeds, n_trials)
    rates: dict[str, list[float]] = {}
    for u in units:
        rates.setdefault(u["task"], []).append(u["wall"] / max(u["total"], 1) * 1000)

    def estimate(items) -> float:
        total = 0.0
        for setup, _, length in items:
            rate = statistics.mean(rates[setup.task]) if rates.get(setup.task) else PRIOR_SECONDS_PER_1K[setup.task]
            # what a sweep spends, in per_trial units per trial (smoke runs: ~0.75 with pruning)
            per_trial = (length or setup.per_trial) * (0.75 if length is None else 0.8)
            total += rate * per_trial * n_trials / 1000
        return total

    def key(setup, seed, length):
        return unit_key(setup.task, seed, "horizons" if length is None else "separate",
                        setup.per_trial if length is None else length, n_trials, setup.fingerprint())

    left = [item for item in todo if key(*item) not in done]
    log(f"# {len(todo)} sweeps, {len(todo) - len(left)} saved; left about {estimate(left) / 60:.1f} min")
    started = time.perf_counter()
    out = []
    for i, (setup, seed, length) in enumerate(todo):
        k = key(setup, seed, length)
        if k in done:
            out.append(done[k])
            continue
        unit = run_unit(setup, seed, n_trials, length)
        out.append(unit)
        done[k] = unit
        units = [u for u in units if key_of(u) != k] + [unit]
        if save:
            save_units(save, units, meta or {})
        rates.setdefault(setup.task, []).append(unit["wall"] / max(unit["total"], 1) * 1000)
        rest = [item for item in todo[i + 1:] if key(*item) not in done]
        log(f"# {setup.task:12s} seed {seed} {unit['arm']:9s} {unit['length']:>8g} examples: "
            f"{len(unit['trials'])} trials, {unit['total']:.0f} examples, {unit['wall']:.1f}s "
            f"(elapsed {(time.perf_counter() - started) / 60:.1f} min, left about {estimate(rest) / 60:.1f} min)")
    return out


# --- analysis -----------------------------------------------------------------------------------------

def best_at(unit: dict, length: float, sign: float) -> float | None:
    """The best value of the unit's runs of `length` trained to their end; None when there is none."""
    values = [t["runs"][f"{length:g}"] for t in unit["trials"] if f"{length:g}" in t["runs"]]
    return max(values, key=lambda v: sign * v) if values else None


def complete_best(unit: dict, sign: float) -> float | None:
    """The product's study.best_value: the best COMPLETE trial."""
    values = finite(t["complete_value"] for t in unit["trials"])
    return max(values, key=lambda v: sign * v) if values else None


@dataclass
class Row:
    task: str
    length: float
    fraction: float
    seeds: list[int]
    horizons: list[float | None]  # the horizons arm's best per seed
    separate: list[float | None]  # the separate arm's best per seed
    separate_complete: list[float | None]  # study.best_value of the separate sweep per seed
    sign: float = 1.0

    @property
    def complete(self) -> bool:
        return bool(self.seeds) and None not in self.horizons and None not in self.separate

    @property
    def diffs(self) -> list[float]:
        """Horizons minus separate, per seed, signed so that > 0 means the horizons arm is better."""
        return [self.sign * (h - s) for h, s in zip(self.horizons, self.separate)]

    @property
    def sd(self) -> float:
        """The seed standard deviation of the separate arm's best (sample SD; nan below 2 seeds)."""
        return statistics.stdev(self.separate) if len(self.separate) >= 2 else math.nan

    @property
    def mean_diff(self) -> float:
        return statistics.mean(self.diffs)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """A paired t interval over seeds for the mean difference (nan below 2 seeds)."""
        d = self.diffs
        if len(d) < 2:
            return math.nan, math.nan
        half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
        return self.mean_diff - half, self.mean_diff + half

    @property
    def passed(self) -> bool:
        """Within SD_FACTOR seed SDs of the separate arm, or better (SD 0: not worse at all)."""
        if not self.complete or len(self.seeds) < 2:
            return False
        return self.mean_diff >= -SD_FACTOR * self.sd


@dataclass
class Compute:
    task: str
    seeds: list[int]
    horizons: list[float]  # each seed's horizons-sweep total, examples
    separate: list[float]  # each seed's summed separate totals

    @property
    def ratio(self) -> float:
        return sum(self.horizons) / sum(self.separate) if sum(self.separate) else math.nan

    @property
    def per_seed(self) -> list[float]:
        return [h / s for h, s in zip(self.horizons, self.separate)]

    @property
    def passed(self) -> bool:
        return bool(self.seeds) and self.ratio <= MAX_RATIO


@dataclass
class Analysis:
    rows: list[Row]
    compute: list[Compute]
    same_runs: dict[str, int]  # pairs of identical (trial number, params) runs across arms: checked, equal

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows) and bool(self.compute) and all(
            c.passed for c in self.compute)


def analyse(units: Iterable[dict], setups: dict[str, Setup]) -> Analysis:
    """Per task, the seeds whose 5 sweeps are all there; per horizon the two arms' bests."""
    by_key: dict[tuple, dict] = {}
    for u in units:
        by_key[(u["task"], u["seed"], u["arm"], float(u["length"]))] = u
    rows, compute = [], []
    same = {"pairs": 0, "equal": 0}
    for task, setup in setups.items():
        sign = 1.0 if setup.direction == "maximize" else -1.0
        lengths = setup.lengths
        seeds = sorted({s for (t, s, _, _) in by_key if t == task
                        and (t, s, "horizons", float(setup.per_trial)) in by_key
                        and all((t, s, "separate", h) in by_key for h in lengths)})
        if not seeds:
            continue
        for h, f in zip(lengths, setup.fractions):
            hs, ss, cs = [], [], []
            for s in seeds:
                hu, su = by_key[(task, s, "horizons", float(setup.per_trial))], by_key[(task, s, "separate", h)]
                hs.append(best_at(hu, h, sign))
                ss.append(best_at(su, h, sign))
                cs.append(complete_best(su, sign))
                pairs, equal = same_runs(hu, su, h)
                same["pairs"] += pairs
                same["equal"] += equal
            rows.append(Row(task, h, f, seeds, hs, ss, cs, sign))
        compute.append(Compute(
            task, seeds, [by_key[(task, s, "horizons", float(setup.per_trial))]["total"] for s in seeds],
            [sum(by_key[(task, s, "separate", h)]["total"] for h in lengths) for s in seeds]))
    return Analysis(rows, compute, same)


def same_runs(horizons_unit: dict, separate_unit: dict, length: float) -> tuple[int, int]:
    """Trials with the same number and parameters in both arms that trained `length` to its end:
    the same run (same seed, schedule, data order), so their values must be equal. (pairs, equal)."""
    key = f"{length:g}"
    other = {t["number"]: t for t in separate_unit["trials"]}
    pairs = equal = 0
    for t in horizons_unit["trials"]:
        o = other.get(t["number"])
        if o is None or o["params"] != t["params"] or key not in t["runs"] or key not in o["runs"]:
            continue
        pairs += 1
        equal += t["runs"][key] == o["runs"][key]
    return pairs, equal


# --- printing -------------------------------------------------------------------------------------

def mean_sd(values: Sequence[float | None]) -> str:
    v = finite(values)
    if not v:
        return "-"
    sd = statistics.stdev(v) if len(v) >= 2 else math.nan
    return f"{statistics.mean(v):.4f} +- {sd:.4f}" + ("" if len(v) == len(values) else f" ({len(v)}/{len(values)})")


def report(analysis: Analysis, command: str, out: Callable[[str], None] = print) -> None:
    out("")
    out(f"command: {command}")
    out("value: best at each horizon over runs trained to that length's end; mean +- SD over seeds;")
    out(f"diff = horizons - separate (> 0: horizons better), paired 95% t interval; pass: mean diff >= "
        f"-{SD_FACTOR:g} x SD(separate)")
    head = (f"{'task':12s} {'horizon':>14s} {'horizons arm':>18s} {'separate arm':>18s} {'diff [95% CI]':>30s} "
            f"{'2 SD':>7s} {'pass':>4s} {'sep. study best':>18s}")
    out(head)
    for r in analysis.rows:
        if not r.complete:
            out(f"{r.task:12s} {r.length:>8g} ({r.fraction:g}x) missing values: horizons {r.horizons} "
                f"separate {r.separate}  FAIL")
            continue
        lo, hi = r.interval()
        out(f"{r.task:12s} {f'{r.length:g} ({r.fraction:g}x)':>14s} {mean_sd(r.horizons):>18s} "
            f"{mean_sd(r.separate):>18s} {f'{r.mean_diff:+.4f} [{lo:+.4f}, {hi:+.4f}]':>30s} "
            f"{SD_FACTOR * r.sd:7.4f} {'yes' if r.passed else 'NO':>4s} {mean_sd(r.separate_complete):>18s}")
    out("")
    out("per seed (horizons arm / separate arm best):")
    for r in analysis.rows:
        pairs = " ".join(f"{s}:{_v(h)}/{_v(p)}" for s, h, p in zip(r.seeds, r.horizons, r.separate))
        out(f"  {r.task:12s} {r.length:>8g}  {pairs}")
    out("")
    out(f"compute (examples consumed, branches included; pass: ratio <= {MAX_RATIO:g})")
    out(f"{'task':12s} {'seeds':>5s} {'horizons sweep':>15s} {'4 separate':>12s} {'ratio':>6s} "
        f"{'per-seed range':>15s} {'pass':>4s}")
    for c in analysis.compute:
        per = c.per_seed
        out(f"{c.task:12s} {len(c.seeds):5d} {statistics.mean(c.horizons):15.0f} {statistics.mean(c.separate):12.0f} "
            f"{c.ratio:6.3f} {f'{min(per):.3f}-{max(per):.3f}':>15s} {'yes' if c.passed else 'NO':>4s}")
    pairs, equal = analysis.same_runs["pairs"], analysis.same_runs["equal"]
    out("")
    out(f"check: {pairs} runs with the same trial number and configuration in both arms, {equal} of them "
        f"with the same value (a horizon's branch is the dedicated run)")
    values_ok = all(r.passed for r in analysis.rows)
    compute_ok = all(c.passed for c in analysis.compute)
    out(f"verdict: {'PASS' if analysis.passed else 'FAIL'} (values within {SD_FACTOR:g} SD at every horizon: "
        f"{'yes' if values_ok else 'no'}; compute ratio <= {MAX_RATIO:g} on every task: "
        f"{'yes' if compute_ok else 'no'})")


def _v(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help=f"seeds 0..N-1 (default {DEFAULT_SEEDS})")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", choices=sorted(SETUPS), default=sorted(SETUPS))
    parser.add_argument("--n-trials", type=int, default=DEFAULT_TRIALS,
                        help=f"trials per sweep, the same in every sweep of both arms (default {DEFAULT_TRIALS})")
    parser.add_argument("--save", help="JSON file: each finished sweep saved as it ends; reruns skip those")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("sweeps").setLevel(logging.WARNING)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    setups = {name: SETUPS[name] for name in args.tasks}
    meta = {"command": command, "seeds": seeds, "n_trials": args.n_trials,
            "setups": {name: asdict(s) for name, s in setups.items()}}
    started = time.perf_counter()
    units = run_all(list(setups.values()), seeds, args.n_trials, args.save, meta, log=lambda s: print(s, flush=True))
    report(analyse(units, setups), command)
    print(f"wall: {(time.perf_counter() - started) / 60:.1f} min (this invocation; saved sweeps are not rerun)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
