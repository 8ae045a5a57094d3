"""Search efficiency: compute to target for random search, a plain Optuna loop and the service.

Each method gets the same total compute per seed (C = `full_trials` x the per-trial budget, in
training examples) on the same task, search ranges and per-trial budget (E epochs of the training
set), and we measure how much of it it spends before any trial first reaches within MARGIN of the
best value known for the task (benchmarks/search_efficiency_reference.json):

(a) random: Optuna's RandomSampler over the service's space (batch size, epochs, base LR, warmup,
    the coupling rules in COUPLINGS), every trial trained to its end, no pruning;
(b) plain:  the objective people write by hand: TPE + MedianPruner, `trial.report` once per epoch
    (step = epoch, so trials of different batch size are compared at different compute), the LR
    searched directly, no coupling, no warmup;
(c) service: `sweeps.loop.runner.run_sweep` with the service's defaults (sampler, pruner, eval_every,
    schedule, coupling) over the same ranges, in a temporary SQLite store.

(a) and (b) train with the same recipe as the service (SGD with momentum 0.9, LR cosine-decayed to
zero at the trial's last planned update, data resident as tensors, the task's factory for model
and data, one intra-op thread like the service on 2 cores) and evaluate once per epoch; the
compute they use is counted here (examples per update). The service's trials record
`examples_seen` and their whole learning curve (step = examples into the trial).

Compute to target = the examples of all earlier trials + the examples into the hitting trial at
its first evaluation within MARGIN of the reference; wall seconds likewise, from the start of the
method's sweep. A method that does not get there within C is censored at C ("not reached").

    python benchmarks/search_efficiency.py [--quick] [--seeds 5] [--tasks ...] [--compare]
    python benchmarks/search_efficiency.py --make-reference   # rebuild the reference JSON
    python benchmarks/search_efficiency.py --tasks char_lm [--corpus-mb 20]   # see below

char_lm (only when named in --tasks): a small character GPT (CHAR_LM_OPTIONS) on the first
--corpus-mb MB of the standard library's *.py files in sorted order (build_corpus; its sha256 and
the Python version are printed and saved with --save, as the corpus differs between versions),
metric val_loss (minimize). It has no reference: the target is the best value any method and seed
reached within C in the same runs, worsened by MARGIN.

The last line is `speedup_vs_random=<x> speedup_vs_plain_optuna=<y>`: geometric means over tasks of
median(compute to target of the baseline) / median(compute to target of the service).
`--compare` instead runs service variants (sampler, pruner, eval_every, coupling list).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import json
import logging
import math
import random
import statistics
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch

from objectives.registry import resolve_task
from objectives.task import TrialSettings
from objectives.training.coupling import couple
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.loop.runner import run_sweep

REFERENCE_FILE = Path(__file__).resolve().parent / "search_efficiency_reference.json"
MARGIN = 0.01  # absolute, in the task's metric (validation accuracy; val_loss in nats for char_lm)
LR_RANGE = (1e-3, 1.0)
BATCH_EXPONENTS = (4, 9)  # batch sizes 16 .. 512
REFERENCE_BATCH = 64
WARMUP_RANGE = (0.0, 0.1)
# The service's default (`search.coupling` absent): the LR searched directly. Searching the rule as
# well ([none, linear, sqrt], the digits example's list) lost on every task: see docs/search_efficiency.md
# and the "coupling=[none,linear,sqrt]" variant of --compare.
COUPLINGS = ["none"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    n_train: int
    epochs: int  # per-trial budget: this many epochs of the training set, in examples
    full_trials: int  # total compute per method = this many full-budget trials
    options: dict = field(default_factory=dict)
    metric: str = "val_accuracy"
    maximize: bool = True

    @property
    def per_trial(self) -> int:
        return self.epochs * self.n_train

    @property
    def total(self) -> int:
        return self.full_trials * self.per_trial


TASKS = {
    "digits_mlp": TaskSpec("digits_mlp", 1438, epochs=20, full_trials=20),
    "digits_cnn": TaskSpec("digits_cnn", 1438, epochs=15, full_trials=16),
    "teacher_mlp": TaskSpec("teacher_mlp", 4096, epochs=20, full_trials=16),
}
# --quick: the same tasks and per-trial budgets (so the same reference), a quarter of the compute
QUICK = {name: TaskSpec(s.name, s.n_train, s.epochs, 4, s.options) for name, s in TASKS.items()}


# --- char_lm on the Python standard library (a real text corpus every machine has) --------------

CORPUS_DIR = Path.home() / ".cache" / "sweeps"
MB = 2**20
CHAR_LM_OPTIONS = {"block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64, "dropout": 0.0}


def stdlib_files() -> list[Path]:
    """The standard library's *.py files in sorted relative-path order, without site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [f.relative_to(root) for f in root.rglob("*.py") if f.is_file()]
    files = [f for f in files if not {"site-packages", "dist-packages"} & set(f.parts)]
    return [root / f for f in sorted(files, key=lambda f: f.as_posix())]


def build_corpus(megabytes: float, folder: Path = CORPUS_DIR) -> dict:
    """The first `megabytes` MB (1 MB = 2**20 bytes of UTF-8) of the standard library's *.py files,
    concatenated as they are in sorted relative-path order; a file that is not valid UTF-8 is
    skipped whole (never replaced), the last file is cut at a character boundary. Written to
    `folder` (rewritten only when its content differs); returns the path, sha256 and counts."""
    limit = int(megabytes * MB)
    parts, size, used, skipped = [], 0, 0, []
    for path in stdlib_files():
        if size >= limit:
            break
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(path.relative_to(sysconfig.get_paths()["stdlib"]).as_posix())
            continue
        raw = raw[: limit - size]
        raw = raw.decode("utf-8", errors="ignore").encode("utf-8")  # a cut inside a character drops it
        parts.append(raw)
        size += len(raw)
        used += 1
    data = b"".join(parts)
    digest = hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    version = ".".join(map(str, sys.version_info[:3]))
    out = folder / f"stdlib_py{version}_{megabytes:g}MB.txt"
    if not out.exists() or hashlib.sha256(out.read_bytes()).hexdigest() != digest:
        out.write_bytes(data)
    text = data.decode("utf-8")
    return {"path": str(out), "sha256": digest, "bytes": len(data), "chars": len(text),
            "vocabulary": len(set(text)), "files": used, "skipped_not_utf8": skipped,
            "python": sys.version.split()[0], "stdlib": sysconfig.get_paths()["stdlib"],
            "megabytes": megabytes}


def char_lm_spec(corpus: dict, windows: int, epochs: int, full_trials: int, val_blocks: int) -> TaskSpec:
    """char_lm on the corpus: `windows` training windows of block_size characters spread evenly over
    the training part (the task's stride option), the last `val_blocks` blocks held out."""
    block = CHAR_LM_OPTIONS["block_size"]
    val_fraction = val_blocks * block / corpus["chars"]
    n_train_chars = corpus["chars"] - int(corpus["chars"] * val_fraction)
    stride = max(block, (n_train_chars - block - 1) // max(windows - 1, 1))
    options = dict(CHAR_LM_OPTIONS, path=corpus["path"], val_fraction=val_fraction, stride=stride,
                   max_train=windows)
    return TaskSpec("char_lm", windows, epochs, full_trials, options, metric="val_loss", maximize=False)


# the compute level for a 2-core CPU: 2048 windows (131k characters sampled across the corpus), 4 epochs
# of them per trial (8192 examples), C = 10 such trials per method and seed (4 with --quick)
CHAR_LM_LEVEL = {"windows": 2048, "epochs": 4, "full_trials": 10, "val_blocks": 512}


# --- accounting -------------------------------------------------------------------------------

@dataclass
class Evaluation:
    examples: int  # training examples into the trial when this value was measured
    value: float
    seconds: float  # wall seconds since the method's sweep started


@dataclass
class TrialRecord:
    examples: int  # training examples the trial processed in all
    evaluations: list[Evaluation]


@dataclass
class Hit:
    examples: float  # math.inf when the target was not reached within the total compute
    seconds: float
    best: float | None  # best value seen within the total compute

    @property
    def reached(self) -> bool:
        return math.isfinite(self.examples)


def compute_to_target(trials: Sequence[TrialRecord], target: float, total: float, maximize: bool = True) -> Hit:
    """Examples (and seconds) spent, in trial order, until a value first reaches `target`.

    Only compute within `total` counts: an evaluation after the method's first `total` examples is
    ignored, and so is every later trial. `best` is the best value seen within `total`.
    """
    spent = 0
    best = None
    hit = None
    for trial in trials:
        if spent >= total:
            break
        for ev in sorted(trial.evaluations, key=lambda e: e.examples):
            if spent + ev.examples > total:
                break
            if not math.isfinite(ev.value):  # a diverged evaluation (NaN or inf) never counts as best
                continue
            if best is None or (ev.value > best if maximize else ev.value < best):
                best = ev.value
            if hit is None and ((ev.value >= target) if maximize else (ev.value <= target)):
                hit = (spent + ev.examples, ev.seconds)
        spent += trial.examples
    return Hit(*(hit or (math.inf, math.inf)), best)


def records_from_study(study: optuna.Study, started: float) -> list[TrialRecord]:
    """The service's trials in the order they ran, from what each recorded.

    The sweep asks a trial ahead while the previous one trains, so a trial's own start time is not
    its training start; its training window is taken as (previous trial's end, its end], and an
    evaluation's time is interpolated in that window by examples.
    """
    records = []
    window_start = 0.0
    for trial in sorted(study.trials, key=lambda t: t.number):
        examples = int(trial.user_attrs.get("examples_seen", 0))
        end = trial.datetime_complete.timestamp() - started if trial.datetime_complete else window_start
        evals = []
        for step, value in sorted(trial.intermediate_values.items()):
            share = min(step / examples, 1.0) if examples else 1.0
            evals.append(Evaluation(min(step, examples) if examples else step, value,
                                    window_start + share * (end - window_start)))
        records.append(TrialRecord(examples, evals))
        window_start = max(window_start, end)
    return records


# --- the hand-written baselines (a) and (b) ------------------------------------------------------

def cosine_lr(peak: float, update: int, planned: int, warmup: int) -> float:
    if update < warmup:
        return peak * (update + 1) / (warmup + 1)
    last = planned - 1 - warmup
    progress = min((update - warmup) / last, 1.0) if last > 0 else 1.0
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


class EpochRun:
    """One trial of the plain loop, trained one epoch at a time, so that it can be paused after an
    epoch and finished later (one_epoch_topk). The LR schedule is planned for `epochs` epochs from
    the start, whether or not the trial gets to finish."""

    def __init__(self, trainer: PlainTrainer, seed: int, batch_size: int, lr: float, epochs: int,
                 warmup_fraction: float):
        torch.random.default_generator.manual_seed(seed)
        settings = TrialSettings(batch_size=batch_size, lr=lr, seed=seed, device=torch.device("cpu"),
                                 options=dict(trainer.spec.options))
        self.trainer, self.task = trainer, trainer.factory(settings)
        self.batch_size, self.lr, self.epochs = batch_size, lr, epochs
        self.optimizer = torch.optim.SGD(self.task.model.parameters(), lr=lr, momentum=0.9)
        self.gen = torch.Generator().manual_seed(seed)
        self.n = len(self.task.train[0])
        self.planned = -(-self.n // batch_size) * epochs
        self.warmup = min(int(round(warmup_fraction * self.planned)), max(self.planned - 1, 0))
        self.update = 0
        self.epoch = 0

    def next_epoch(self, record: TrialRecord) -> float:
        """Train one epoch, add its examples to `record` and its evaluation (at `record.examples`,
        so a record may hold a later part of the trial); raises TrialPruned when it diverged."""
        task, (x, y), (xv, yv) = self.task, self.task.train, self.task.val
        model = task.model
        model.train()
        perm = torch.randperm(self.n, generator=self.gen)
        for start in range(0, self.n, self.batch_size):
            idx = perm[start : start + self.batch_size]
            for group in self.optimizer.param_groups:
                group["lr"] = cosine_lr(self.lr, self.update, self.planned, self.warmup)
            loss = task.loss(model(x[idx]), y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.update += 1
            record.examples += len(idx)
        self.epoch += 1
        if not math.isfinite(loss.item()):
            raise optuna.TrialPruned()  # diverged: the service records these as pruned too
        model.eval()
        with torch.no_grad():  # in chunks, a mean weighted by chunk size, as the service's Trainer
            value = sum(task.metric(model(xv[i : i + 512]), yv[i : i + 512]).item() * len(xv[i : i + 512])
                        for i in range(0, len(xv), 512)) / len(xv)
        record.evaluations.append(Evaluation(record.examples, value, time.perf_counter() - self.trainer.started))
        if not math.isfinite(value):
            raise optuna.TrialPruned()
        return value


class PlainTrainer:
    """The loop a user writes: epochs of shuffled mini-batches, evaluate after each epoch.

    Counts the training examples it processes; `on_epoch(epoch, examples, value)` may return True
    to stop (pruned).
    """

    def __init__(self, spec: TaskSpec, started: float):
        self.spec = spec
        self.factory = resolve_task(spec.name)
        self.started = started
        self.records: list[TrialRecord] = []

    def start(self, seed: int, batch_size: int, lr: float, epochs: int, warmup_fraction: float) -> EpochRun:
        return EpochRun(self, seed, batch_size, lr, epochs, warmup_fraction)

    def train(self, seed: int, batch_size: int, lr: float, epochs: int, warmup_fraction: float,
              on_epoch: Callable[[int, float], bool] | None = None) -> float:
        run = self.start(seed, batch_size, lr, epochs, warmup_fraction)
        record = TrialRecord(0, [])
        self.records.append(record)
        better = max if self.spec.maximize else min
        best = -math.inf if self.spec.maximize else math.inf
        for epoch in range(1, epochs + 1):
            value = run.next_epoch(record)
            best = better(best, value)
            if on_epoch is not None and on_epoch(epoch, value):
                raise optuna.TrialPruned()
        return best


def plain_sweep(spec: TaskSpec, seed: int, method: str) -> tuple[list[TrialRecord], float]:
    """(a) random, (b) plain TPE + median or (d) TPE + Optuna's HyperbandPruner (method
    "hyperband"), run until the method has used its total compute."""
    started = time.perf_counter()
    trainer = PlainTrainer(spec, started)
    if method == "random":
        sampler, pruner = optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner()
    elif method == "hyperband":  # rungs in epochs (the step reported), 1 .. E, Optuna's default eta 3
        sampler = optuna.samplers.TPESampler(seed=seed)
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.epochs, reduction_factor=3)
    else:
        sampler, pruner = optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner()
    study = optuna.create_study(direction="maximize" if spec.maximize else "minimize", sampler=sampler, pruner=pruner)

    def objective(trial: optuna.Trial) -> float:
        batch_size = 2 ** trial.suggest_int("batch_size_log2", *BATCH_EXPONENTS)
        epochs = trial.suggest_int("epochs", 1, spec.epochs)
        trial_seed = seed * 100_003 + trial.number
        if method == "random":  # the service's space: base LR, coupling rule, warmup
            base_lr = trial.suggest_float("base_lr", *LR_RANGE, log=True)
            rule = trial.suggest_categorical("coupling", COUPLINGS)
            warmup = trial.suggest_float("warmup_fraction", *WARMUP_RANGE)
            lr = couple(rule, base_lr, batch_size, REFERENCE_BATCH).lr
            return trainer.train(trial_seed, batch_size, lr, epochs, warmup)
        lr = trial.suggest_float("lr", *LR_RANGE, log=True)

        def report(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        return trainer.train(trial_seed, batch_size, lr, epochs, 0.0, report)

    def enough(study: optuna.Study, _trial) -> None:
        if sum(r.examples for r in trainer.records) >= spec.total:
            study.stop()

    with one_thread():
        study.optimize(objective, callbacks=[enough], catch=(Exception,))
    return trainer.records, time.perf_counter() - started


def topk_plan(spec: TaskSpec) -> tuple[int, int]:
    """(N, K) for one_epoch_topk: N configurations trained one epoch each, the best K finished to
    E epochs, with N + K (E - 1) = F E epochs of the training set, i.e. exactly the total compute
    C = F full trials. K spends about half of C on finishing (K = round(F E / (2 (E - 1)))), so
    N is about F E / 2 screening epochs; with E = 1 there is nothing to finish and N = K = F."""
    full, epochs = spec.full_trials, spec.epochs
    if epochs == 1:
        return full, full
    k = max(1, round(full * epochs / (2 * (epochs - 1))))
    return full * epochs - k * (epochs - 1), k


def one_epoch_topk_sweep(spec: TaskSpec, seed: int, picked: list[int] | None = None) -> tuple[list[TrialRecord], float]:
    """(e) Egele et al. 2023's one-epoch baseline: N random configurations (batch size and LR from
    the plain loop's space, the whole E epochs planned, no warmup) trained one epoch each, then the
    K best by that first evaluation resumed from where they stopped and trained to E epochs.

    Records in the order the compute was spent: N one-epoch records, then one record per finished
    configuration holding only its epochs 2..E (examples counted from its resumption), so
    compute_to_target counts every example once, in order. A configuration that diverges is
    dropped (its epoch still counts); one that diverges while finishing leaves its rest unspent.
    `picked`, when given, receives the screening indices of the configurations finished.
    """
    started = time.perf_counter()
    trainer = PlainTrainer(spec, started)
    n, k = topk_plan(spec)
    rng = random.Random(seed)
    sign = -1.0 if spec.maximize else 1.0  # sort ascending on sign * value: best first
    best: list[tuple[float, int, EpochRun]] = []
    with one_thread():
        for i in range(n):
            batch_size = 2 ** rng.randint(*BATCH_EXPONENTS)
            lr = math.exp(rng.uniform(math.log(LR_RANGE[0]), math.log(LR_RANGE[1])))
            record = TrialRecord(0, [])
            trainer.records.append(record)
            run = trainer.start(seed * 100_003 + i, batch_size, lr, spec.epochs, 0.0)
            try:
                value = run.next_epoch(record)
            except optuna.TrialPruned:
                continue
            best.append((sign * value, i, run))
            best.sort(key=lambda b: (b[0], b[1]))
            del best[k:]  # only the K best so far stay in memory
        for _, i, run in best:
            if picked is not None:
                picked.append(i)
            record = TrialRecord(0, [])
            trainer.records.append(record)
            try:
                while run.epoch < spec.epochs:
                    run.next_epoch(record)
            except optuna.TrialPruned:
                pass
    return trainer.records, time.perf_counter() - started


class one_thread:
    """One intra-op thread, as the service trains on 2 cores (the other is its bookkeeping's)."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


# --- (c) the service ---------------------------------------------------------------------------------

def service_study(spec: TaskSpec, seed: int, overrides: dict | None = None) -> dict:
    """The study file (c) runs: defaults for everything but the task, budget and search block."""
    data = {
        "study": {"name": f"eff-{spec.name}-{seed}", "metric": spec.metric,
                  "direction": "maximize" if spec.maximize else "minimize",
                  "n_trials": spec.full_trials, "seed": seed},
        "objective": {"task": spec.name, "optimizer": "sgd", "options": dict(spec.options)},
        "budget": {"unit": "examples", "per_trial": spec.per_trial},
        "search": {
            "batch_size": {"low": 2 ** BATCH_EXPONENTS[0], "high": 2 ** BATCH_EXPONENTS[1], "log": True,
                           "power_of_two": True},
            "epochs": {"low": 1, "high": spec.epochs},
            "base_lr": {"low": LR_RANGE[0], "high": LR_RANGE[1], "log": True},
            "coupling": list(COUPLINGS),
            "reference_batch_size": REFERENCE_BATCH,
            "warmup_fraction": {"low": WARMUP_RANGE[0], "high": WARMUP_RANGE[1]},
        },
    }
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(copy.deepcopy(values))
    return data


def service_sweep(spec: TaskSpec, seed: int, overrides: dict | None = None) -> tuple[list[TrialRecord], float]:
    """run_sweep until the study's trials have used the total compute; more trials are added by
    resuming the study as a further worker (its own sampler seed), as a user would."""
    with tempfile.TemporaryDirectory() as folder:
        data = service_study(spec, seed, overrides)
        data["study"]["storage"] = f"sqlite:///{folder}/efficiency.db"
        config = parse_config(data, folder)
        started_wall, started = time.time(), time.perf_counter()
        n_trials, chunk = 2 * spec.full_trials, 0
        while True:
            study = run_sweep(config, target_of(config, n_trials=n_trials), show_progress=False,
                              worker_index=chunk)
            spent = sum(int(t.user_attrs.get("examples_seen", 0)) for t in study.trials)
            if spent >= spec.total:
                break
            per_trial = spent / max(len(study.trials), 1)
            n_trials += max(4, math.ceil((spec.total - spent) / max(per_trial, 1.0)) + 2)
            chunk += 1
        wall = time.perf_counter() - started
        return records_from_study(study, started_wall), wall


# --- the benchmark ---------------------------------------------------------------------------------

BASELINES = ("random", "plain_optuna", "optuna_hyperband", "one_epoch_topk")
METHODS = BASELINES + ("service",)


def run_method(method: str, spec: TaskSpec, seed: int,
               overrides: dict | None = None) -> tuple[list[TrialRecord], float]:
    if method == "random":
        return plain_sweep(spec, seed, "random")
    if method == "plain_optuna":
        return plain_sweep(spec, seed, "tpe")
    if method == "optuna_hyperband":
        return plain_sweep(spec, seed, "hyperband")
    if method == "one_epoch_topk":
        return one_epoch_topk_sweep(spec, seed)
    return service_sweep(spec, seed, overrides)


def load_reference() -> dict:
    return json.loads(REFERENCE_FILE.read_text())


def median_of(values: list[float]) -> float:
    return statistics.median(values)  # inf (not reached) sorts last, so the median is censored too


def spread(values: list[float], unit: str = "") -> str:
    """Interquartile range over seeds (n/r: not reached within the total compute)."""
    if len(values) < 2:
        return "-"
    q = sorted(values)
    k = len(q) // 4
    return f"{fmt(q[k], unit)}-{fmt(q[-1 - k], unit)}"


def fmt(v: float, unit: str = "") -> str:
    if not math.isfinite(v):
        return "n/r"
    if unit == "s":
        return f"{v:.1f}"
    return f"{v / 1000:.0f}k" if v >= 10_000 else f"{v:.0f}"


@dataclass
class Cell:
    """One method on one task: each seed's trial records and wall seconds."""

    runs: list[tuple[list[TrialRecord], float]] = field(default_factory=list)

    def hits(self, target: float, total: float, maximize: bool = True) -> list[Hit]:
        return [compute_to_target(records, target, total, maximize) for records, _ in self.runs]


def target_for(reference: dict, name: str, spec: TaskSpec, margin: float) -> float:
    """The reference value, worse by `margin` in the task's direction."""
    best = reference[name]["best"]
    return best - margin if spec.maximize else best + margin


def with_pooled_best(reference: dict, cells: dict[tuple[str, str], Cell], specs: dict[str, TaskSpec]) -> dict:
    """A task without a reference (char_lm) takes the best value any method and seed reached within
    its total compute C in these runs: the target is relative to the best found."""
    out = dict(reference)
    for name, spec in specs.items():
        if name in out:
            continue
        bests = [h.best for (task, _), cell in cells.items() if task == name
                 for h in cell.hits(math.nan, spec.total, spec.maximize) if h.best is not None]
        if bests:
            out[name] = {"best": max(bests) if spec.maximize else min(bests), "pooled": True}
    return out


def censored_median(values: list[float], total: float) -> float:
    """The median, with not-reached seeds counted as the whole budget (a lower bound on their cost)."""
    return median_of([min(v, total) for v in values])


def run_grid(specs: dict[str, TaskSpec], seeds: list[int], methods: dict[str, dict | None],
             reference: dict, log=print) -> dict[tuple[str, str], Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    for name, spec in specs.items():
        target = target_for(reference, name, spec, MARGIN) if name in reference else math.nan
        for label, overrides in methods.items():
            cell = cells.setdefault((name, label), Cell())
            for seed in seeds:
                method = label if label in BASELINES else "service"
                records, wall = run_method(method, spec, seed, overrides)
                cell.runs.append((records, wall))
                hit = compute_to_target(records, target, spec.total, spec.maximize)
                log(f"# {name:12s} {label:22s} seed {seed}: examples {fmt(hit.examples)} seconds "
                    f"{fmt(hit.seconds, 's')} best@C {hit.best:.4f} target {target:.4f} "
                    f"trials {len(records)} wall {wall:.1f}s")
    return cells


def print_table(cells: dict[tuple[str, str], Cell], specs: dict[str, TaskSpec], reference: dict,
                labels: Sequence[str], margin: float = MARGIN) -> None:
    print()
    print(f"compute to target (target = reference worsened by {margin}); IQR over seeds; n/r = not reached within C")
    print(f"{'task':12s} {'method':22s} {'reached':>7s} {'examples (median)':>17s} {'IQR':>13s} "
          f"{'seconds (median)':>16s} {'IQR':>11s} {'best@C (median)':>15s}")
    for name, spec in specs.items():
        target = target_for(reference, name, spec, margin)
        for label in labels:
            hits = cells[(name, label)].hits(target, spec.total, spec.maximize)
            examples, seconds = [h.examples for h in hits], [h.seconds for h in hits]
            bests = [h.best for h in hits if h.best is not None]
            print(f"{name:12s} {label:22s} {sum(h.reached for h in hits):>3d}/{len(hits):<3d} "
                  f"{fmt(median_of(examples)):>17s} {spread(examples):>13s} "
                  f"{fmt(median_of(seconds), 's'):>16s} {spread(seconds, 's'):>11s} "
                  f"{statistics.median(bests) if bests else float('nan'):>15.4f}")
        what = "best of all runs within C" if reference[name].get("pooled") else "reference"
        print(f"{'':12s} {spec.metric} target {target:.4f} ({what} {reference[name]['best']:.4f} "
              f"{'-' if spec.maximize else '+'} {margin}), "
              f"budget C = {spec.total} examples = {spec.full_trials} trials of {spec.per_trial}")


def speedups(cells, specs, reference: dict, margin: float = MARGIN, service_label: str = "service",
             log=print) -> tuple[float, float]:
    ratios: dict[str, list[float]] = {"random": [], "plain_optuna": []}
    for name, spec in specs.items():
        target = target_for(reference, name, spec, margin)
        service_hits = cells[(name, service_label)].hits(target, spec.total, spec.maximize)
        ours = censored_median([h.examples for h in service_hits], spec.total)
        for base in ratios:
            theirs = censored_median([h.examples for h in cells[(name, base)].hits(target, spec.total, spec.maximize)],
                                     spec.total)
            ratios[base].append(theirs / ours)
            log(f"# margin {margin}, {name}: median examples to target {base} / service = "
                f"{fmt(theirs)} / {fmt(ours)} = {theirs / ours:.2f}")
    geo = {k: math.exp(sum(math.log(r) for r in v) / len(v)) for k, v in ratios.items()}
    return geo["random"], geo["plain_optuna"]


def save_runs(path: str, cells: dict[tuple[str, str], Cell], meta: dict | None = None) -> None:
    data = [{"task": task, "method": label, "runs": [
        {"wall": wall, "trials": [{"examples": r.examples, "evals": [[e.examples, e.value, e.seconds]
                                                                     for e in r.evaluations]} for r in records]}
        for records, wall in cell.runs]} for (task, label), cell in cells.items()]
    text = json.dumps({"meta": meta, "cells": data} if meta else data)  # meta: e.g. the corpus and its hash
    if path.endswith(".gz"):
        Path(path).write_bytes(gzip.compress(text.encode()))
    else:
        Path(path).write_text(text)


def load_runs(paths: Sequence[str]) -> dict[tuple[str, str], Cell]:
    """Runs saved with --save; the same task and method in several files add up (more seeds)."""
    cells: dict[tuple[str, str], Cell] = {}
    for path in paths:
        raw = Path(path).read_bytes()
        saved = json.loads(gzip.decompress(raw) if path.endswith(".gz") else raw)
        for item in saved["cells"] if isinstance(saved, dict) else saved:
            cell = cells.setdefault((item["task"], item["method"]), Cell())
            cell.runs.extend(
                ([TrialRecord(t["examples"], [Evaluation(*e) for e in t["evals"]]) for t in run["trials"]],
                 run["wall"])
                for run in item["runs"])
    return cells


VARIANTS = {
    "service": None,  # the defaults
    "sampler=random": {"sampler": {"name": "random"}},
    "pruner=median": {"pruner": {"name": "median"}},
    "pruner=sha": {"pruner": {"name": "successive_halving"}},
    "pruner=none": {"pruner": {"name": "none"}},
    "eval_every=per/5": {"budget": {"eval_every": "5"}},
    "eval_every=per/20": {"budget": {"eval_every": "20"}},
    "coupling=[none]": {"search": {"coupling": ["none"]}},
    "coupling=[sqrt]": {"search": {"coupling": ["sqrt"]}},
    "coupling=[linear]": {"search": {"coupling": ["linear"]}},
    "coupling=[none,linear,sqrt]": {"search": {"coupling": ["none", "linear", "sqrt"]}},
}


def resolve_variant(overrides: dict | None, spec: TaskSpec) -> dict | None:
    if overrides is None:
        return None
    out = copy.deepcopy(overrides)
    if "budget" in out and isinstance(out["budget"].get("eval_every"), str):
        out["budget"]["eval_every"] = max(1, spec.per_trial // int(out["budget"]["eval_every"]))
    return out


def make_reference(specs: dict[str, TaskSpec]) -> None:
    """A grid run once per task: every batch size x 10 LRs (log-spaced over the searched range),
    coupling none, the whole per-trial budget, no pruning; the best value is the reference."""
    reference = {}
    for name, spec in specs.items():
        with tempfile.TemporaryDirectory() as folder:
            data = service_study(spec, 0, {
                "sampler": {"name": "grid", "grid_points": 10}, "pruner": {"name": "none"},
                "search": {"coupling": "none", "warmup_fraction": 0.0, "epochs": None}})
            data["search"].pop("epochs")
            data["study"].update(storage=f"sqlite:///{folder}/ref.db", n_trials=60)
            config = parse_config(data, folder)
            started = time.perf_counter()
            study = run_sweep(config, target_of(config), show_progress=False)
            best = study.best_trial
            reference[name] = {
                "best": round(study.best_value, 6),
                "best_params": {"batch_size": best.user_attrs["batch_size"], "lr": round(best.user_attrs["lr"], 6)},
                "how": (f"grid over batch size 16..512 (powers of two) x 10 log-spaced LRs in "
                        f"[{LR_RANGE[0]}, {LR_RANGE[1]}], SGD momentum 0.9, cosine schedule, no coupling or "
                        f"warmup, every trial trained its whole budget of {spec.per_trial} examples "
                        f"({spec.epochs} epochs), no pruning, best checkpoint; 60 trials, study seed 0"),
                "per_trial_examples": spec.per_trial,
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(name, reference[name], flush=True)
    REFERENCE_FILE.write_text(json.dumps(reference, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 4 full trials' compute per method (a smoke run)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method and task (default 5; 2 quick)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS) + ["char_lm"], default=None,
                        help="default: the tasks with a reference; char_lm (on the standard library's *.py "
                             "files, target relative to the best any method found) only when named")
    parser.add_argument("--corpus-mb", type=float, default=20.0,
                        help="char_lm: the corpus is the first this many MB (2**20 bytes) of the stdlib's *.py files")
    parser.add_argument("--compare", nargs="*", default=None, metavar="VARIANT",
                        help=f"compare service settings instead (default all): {', '.join(VARIANTS)}")
    parser.add_argument("--make-reference", action="store_true", help="rebuild " + REFERENCE_FILE.name)
    parser.add_argument("--also-margin", type=float, nargs="*", default=[],
                        help="also print the tables for these (stricter) margins, from the same runs")
    parser.add_argument("--save", help="write every run's trial records to this JSON file")
    parser.add_argument("--load", nargs="+", help="analyse runs saved with --save (several files: merged) instead")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="run only these methods (the table and speedups need all three)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--service-label", default="service",
                        help="with --load: the saved variant (from --compare) to rate against the baselines")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(logging.WARNING)
    specs = QUICK if args.quick else TASKS
    meta = None
    if args.tasks:
        specs = {k: v for k, v in specs.items() if k in args.tasks}
        if "char_lm" in args.tasks:
            if args.make_reference:
                parser.error("char_lm has no reference: its target is relative to the best found")
            corpus = build_corpus(args.corpus_mb)
            level = dict(CHAR_LM_LEVEL, full_trials=4 if args.quick else CHAR_LM_LEVEL["full_trials"])
            specs["char_lm"] = char_lm_spec(corpus, **level)
            meta = {"corpus": corpus, "char_lm": dict(level, options=specs["char_lm"].options)}
            print(f"# char_lm corpus: {corpus['path']} sha256 {corpus['sha256']} python {corpus['python']} "
                  f"{corpus['bytes']} bytes, {corpus['files']} files, skipped (not UTF-8): "
                  f"{', '.join(corpus['skipped_not_utf8']) or 'none'}", flush=True)
    if args.make_reference:
        make_reference({k: TASKS[k] for k in specs})
        return
    reference = load_reference()
    n_seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.compare is not None:
        labels = args.compare or list(VARIANTS)
        if args.load:
            cells = load_runs(args.load)
        else:
            cells = {}
            for name, spec in specs.items():
                variants = {v: resolve_variant(VARIANTS[v], spec) for v in labels}
                cells.update(run_grid({name: spec}, seeds, variants, reference, log))
    else:
        labels = list(args.methods) + ([args.service_label] if args.service_label != "service" else [])
        methods = {m: None for m in args.methods}
        cells = load_runs(args.load) if args.load else run_grid(specs, seeds, methods, reference, log)
    if args.save:
        save_runs(args.save, cells, meta)
    specs = {k: v for k, v in specs.items() if any(task == k for task, _ in cells)}
    reference = with_pooled_best(reference, cells, specs)
    rated = args.compare is None and all((task, method) in cells for task in specs
                                         for method in ("random", "plain_optuna", args.service_label))
    for margin in args.also_margin:
        print_table(cells, specs, reference, labels, margin)
        if rated:
            x, y = speedups(cells, specs, reference, margin, args.service_label)
            print(f"# margin {margin}: speedup_vs_random={x:.2f} speedup_vs_plain_optuna={y:.2f}")
    print_table(cells, specs, reference, labels)
    if rated:
        x, y = speedups(cells, specs, reference, MARGIN, args.service_label)
        print(f"speedup_vs_random={x:.2f} speedup_vs_plain_optuna={y:.2f}")


if __name__ == "__main__":
    main()
