"""Search efficiency: compute to target for random search, a plain Optuna loop and the service.

Each method gets the same total compute per seed (C = `full_trials` x the per-trial budget, in
training examples) on the same task, search ranges and per-trial budget (E epochs of the training
set), and we measure how much of it it spends before any trial first reaches within MARGIN of the
task's reference: by default (--reference seed_mean) the mean over 8 seeds (--noise) of the best
evaluation of the best configuration of a 60-trial grid (--make-reference,
benchmarks/search_efficiency_reference.json); --reference grid_max uses the grid's best single trial,
as the figures before issue 17 did:

(a) random: Optuna's RandomSampler over the service's space (batch size, epochs, base LR, warmup,
    the coupling rules in COUPLINGS), every trial trained to its end, no pruning;
(b) plain:  the objective people write by hand: TPE + MedianPruner, `trial.report` once per epoch
    (step = epoch, so trials of different batch size are compared at different compute), the LR
    searched directly, no coupling, no warmup;
(c) service: `sweeps.loop.runner.run_sweep` with the service's defaults (sampler, pruner, eval_every,
    schedule, coupling) over the same ranges, in a temporary SQLite store;
(d) optuna_hyperband: (b) with Optuna's HyperbandPruner (min_resource 1, max_resource E epochs,
    reduction factor 3) in place of the MedianPruner, `trial.report` once per epoch;
(e) one_epoch_topk (Egele et al. 2023): N random configurations (batch size, LR) trained one epoch
    each, the K best by that value resumed and trained to E epochs; N + K (E - 1) = F E epochs,
    exactly C (topk_plan: K spends about half of C on finishing).

(a) and (b) train with the same recipe as the service (SGD with momentum 0.9, LR cosine-decayed to
zero at the trial's last planned update, data resident as tensors, the task's factory for model
and data, one intra-op thread like the service on 2 cores) and evaluate once per epoch; the
compute they use is counted here (examples per update). The service's trials record
`examples_seen` and their whole learning curve (step = examples into the trial).

Compute to target = the examples of all earlier trials + the examples into the hitting trial at
its first evaluation within MARGIN of the reference; wall seconds likewise, from the start of the
method's sweep. A method that does not get there within C is censored at C ("not reached").

    python benchmarks/search_efficiency.py [--quick] [--seeds 5] [--tasks ...] [--compare]
    python benchmarks/search_efficiency.py --make-reference [--tasks ...]   # (re)make reference entries
    python benchmarks/search_efficiency.py --noise [--tasks ...]   # noise of the reference configuration
    python benchmarks/search_efficiency.py --tasks split --seeds 8 --save runs.jsonl [--estimate]

Split (docs/search_efficiency.md): development tasks digits_mlp and teacher_mlp (the defaults are
chosen there), held-out tasks char_lm and resnet_synthetic (reported apart; the defaults are not
changed after seeing them). `--tasks development|held_out|split` name the groups; --quick runs the
development tasks only. `--save FILE` appends each finished (task, method, seed) run as one JSON
line as it completes, and a rerun with the same FILE reads those back instead of running them, so a
stopped run resumes; the time estimate of the whole grid and of what is left is printed at the
start and after each run. `--noise` writes search_efficiency_noise.json; the analysis adds a
second margin of twice that noise per task.
    python benchmarks/search_efficiency.py --tasks char_lm [--corpus-mb 20]   # see below

char_lm (only when named in --tasks): a small character GPT (CHAR_LM_OPTIONS) on the first
--corpus-mb MB of the standard library's *.py files in sorted order (build_corpus; its sha256 and
the Python version are printed and saved with --save, as the corpus differs between versions),
metric val_loss (minimize). It has no reference: the target is the best value any method and seed
reached within C in the same runs, worsened by MARGIN.

Per group (development, held-out) and margin, a line `<group> <margin>: speedup_vs_<baseline>=<x> ...`:
geometric means over tasks of median(compute to target of the baseline) / median(compute to target
of the service), each task's ratio printed on the line before it.
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
import os
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
from objectives.training.schedule import Schedule
from sweeps.config.study_file import DEFAULT_DECAY_FRACTION, parse_config
from sweeps.config.target import target_of
from sweeps.loop.runner import run_sweep
from sweeps.trial.record import consumed, cooldown_consumed

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
# held out (issue 17): the built-in small ResNet on generated images, sized for 2 CPU cores
RESNET_OPTIONS = {"width": 8, "blocks": 1, "n_train": 2048, "n_val": 1024, "classes": 10, "noise": 3.0}
TASKS["resnet_synthetic"] = TaskSpec("resnet_synthetic", 2048, epochs=4, full_trials=10, options=RESNET_OPTIONS)
# --quick: the same tasks and per-trial budgets (so the same reference), a quarter of the compute
QUICK = {name: TaskSpec(s.name, s.n_train, s.epochs, 4, s.options) for name, s in TASKS.items()}

# The split (docs/search_efficiency.md, fixed before any held-out run): defaults are chosen on the
# development tasks and never changed after seeing held-out results.
DEVELOPMENT = ("digits_mlp", "teacher_mlp")
HELD_OUT = ("char_lm", "resnet_synthetic")
DEFAULT_TASKS = ("digits_mlp", "digits_cnn", "teacher_mlp")  # no --tasks: the runs documented so far
GROUPS = {"development": DEVELOPMENT, "held_out": HELD_OUT, "split": DEVELOPMENT + HELD_OUT}
# For the time estimate before any run of a task is saved: seconds per 1000 training examples on
# 2 shared CPU cores, one process (dev tasks: the saved 5-seed runs' walls, the slowest method;
# char_lm: its 3-seed runs; resnet_synthetic: one timed epoch, evaluation included, plus margin).
PRIOR_SECONDS_PER_1K = {"digits_mlp": 0.03, "digits_cnn": 0.13, "teacher_mlp": 0.06, "char_lm": 1.5,
                        "resnet_synthetic": 1.5}


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


def cooldown_shares(steps: list[int], branched_below: float) -> list[float]:
    """The share of a trial's cooldown examples spent by each evaluation, cumulated: a branch at
    step s trains cooldown_fraction x the updates done, so about in proportion to s, and only the
    evaluations before the decay (step < branched_below) branch."""
    weights = [float(s) if s < branched_below else 0.0 for s in steps]
    total, done, shares = sum(weights), 0.0, []
    for w in weights:
        done += w
        shares.append(done / total if total else 0.0)
    return shares


def records_from_study(study: optuna.Study, started: float, branched_below: float = math.inf) -> list[TrialRecord]:
    """The service's trials in the order they ran, from what each recorded.

    The sweep asks a trial ahead while the previous one trains, so a trial's own start time is not
    its training start; its training window is taken as (previous trial's end, its end], and an
    evaluation's time is interpolated in that window by examples. Cooldown branches count as
    compute: each evaluation's examples include the branches made up to it (`cooldown_shares`).
    """
    records = []
    window_start = 0.0
    for trial in sorted(study.trials, key=lambda t: t.number):
        examples = int(trial.user_attrs.get("examples_seen", 0))
        branches = int(cooldown_consumed(trial.user_attrs, "examples"))
        end = trial.datetime_complete.timestamp() - started if trial.datetime_complete else window_start
        evals = []
        steps = sorted(trial.intermediate_values)
        for step, share_of_branches in zip(steps, cooldown_shares(steps, branched_below)):
            share = min(step / examples, 1.0) if examples else 1.0
            at = (min(step, examples) if examples else step) + branches * share_of_branches
            evals.append(Evaluation(at, trial.intermediate_values[step], window_start + share * (end - window_start)))
        records.append(TrialRecord(examples + branches, evals))
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
        # "+wsd" baselines: the service's own wsd schedule (its default since issue 17), else cosine
        self.schedule = (Schedule.build(lr, self.planned, warmup_fraction, "wsd", 0.0, DEFAULT_DECAY_FRACTION)
                         if trainer.shape == "wsd" else None)
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
                group["lr"] = (self.schedule.lr_at(self.update) if self.schedule is not None
                               else cosine_lr(self.lr, self.update, self.planned, self.warmup))
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

    def __init__(self, spec: TaskSpec, started: float, shape: str = "cosine"):
        self.spec = spec
        self.shape = shape  # the LR schedule: cosine, or wsd for the "+wsd" baselines
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


def plain_sweep(spec: TaskSpec, seed: int, method: str, shape: str = "cosine") -> tuple[list[TrialRecord], float]:
    """(a) random, (b) plain TPE + median or (d) TPE + Optuna's HyperbandPruner (method
    "hyperband"), run until the method has used its total compute; `shape`: the LR schedule."""
    started = time.perf_counter()
    trainer = PlainTrainer(spec, started, shape)
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


def one_epoch_topk_sweep(spec: TaskSpec, seed: int, picked: list[int] | None = None,
                         shape: str = "cosine") -> tuple[list[TrialRecord], float]:
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
    trainer = PlainTrainer(spec, started, shape)
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
            spent = sum(consumed(t, "examples") for t in study.trials)  # cooldown branches included
            if spent >= spec.total:
                break
            per_trial = spent / max(len(study.trials), 1)
            n_trials += max(4, math.ceil((spec.total - spent) / max(per_trial, 1.0)) + 2)
            chunk += 1
        wall = time.perf_counter() - started
        decay = config.schedule.decay_fraction if config.schedule.cooldown_evaluations else None
        branched_below = (1.0 - decay) * spec.per_trial if decay is not None else math.inf
        return records_from_study(study, started_wall, branched_below), wall


# --- the benchmark ---------------------------------------------------------------------------------

BASELINES = ("random", "plain_optuna", "optuna_hyperband", "one_epoch_topk")
METHODS = BASELINES + ("service",)
# The same baselines training with the service's wsd schedule instead of cosine: since issue 17 the
# service's default, so these are the like-for-like baselines (the recipe the same, only the search
# differs); not in the default grid, which was fixed before the change (`--methods random+wsd ...`).
WSD = "+wsd"
WSD_BASELINES = tuple(b + WSD for b in BASELINES)


def run_method(method: str, spec: TaskSpec, seed: int,
               overrides: dict | None = None) -> tuple[list[TrialRecord], float]:
    shape = "wsd" if method.endswith(WSD) else "cosine"
    method = method.removesuffix(WSD)
    if method == "random":
        return plain_sweep(spec, seed, "random", shape)
    if method == "plain_optuna":
        return plain_sweep(spec, seed, "tpe", shape)
    if method == "optuna_hyperband":
        return plain_sweep(spec, seed, "hyperband", shape)
    if method == "one_epoch_topk":
        return one_epoch_topk_sweep(spec, seed, shape=shape)
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


def fingerprint(spec: TaskSpec, meta: dict | None = None, total: bool = True) -> str:
    """What a saved run must match to be reused: the task, its data and its compute level (for
    char_lm the corpus's sha256, not the path of the file it was written to). `total=False`: the
    per-trial level only (what a reference or a noise measurement depends on)."""
    options = {k: v for k, v in spec.options.items() if k != "path"}
    corpus = ((meta or {}).get("corpus") or {}).get("sha256") if spec.name == "char_lm" else None
    return json.dumps({"task": spec.name, "n_train": spec.n_train, "epochs": spec.epochs,
                       "full_trials": spec.full_trials if total else None, "options": options,
                       "corpus_sha256": corpus}, sort_keys=True)


RunKey = tuple[str, str, int, str]  # task, method (or variant), seed, fingerprint


def run_to_json(task: str, method: str, seed: int, fp: str, records: list[TrialRecord], wall: float,
                meta: dict | None = None) -> dict:
    return {"task": task, "method": method, "seed": seed, "fingerprint": fp, "wall": wall, "meta": meta,
            "trials": [{"examples": r.examples, "evals": [[e.examples, e.value, e.seconds] for e in r.evaluations]}
                       for r in records]}


def append_run(path: str, line: dict) -> None:
    """One finished run, appended as one JSON line and flushed to disk before the next starts. A
    line cut short by an earlier stop is ended first, so that it does not swallow this one."""
    torn = False
    if Path(path).exists() and Path(path).stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: str) -> list[dict]:
    """The runs of a --save file (JSON lines, or the same gzipped); a last line cut short by a stop
    mid-write is skipped, with a note."""
    if not Path(path).exists():
        return []
    raw = Path(path).read_bytes()
    text = (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8")
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"# {path}:{number}: not a complete run (a stop mid-write?), skipped", file=sys.stderr)
    return out


def records_of(item: dict) -> list[TrialRecord]:
    return [TrialRecord(t["examples"], [Evaluation(*e) for e in t["evals"]]) for t in item["trials"]]


def saved_runs(path: str) -> dict[RunKey, tuple[list[TrialRecord], float]]:
    return {(item["task"], item["method"], item["seed"], item["fingerprint"]): (records_of(item), item["wall"])
            for item in read_lines(path)}


def estimate_seconds(spec: TaskSpec, method: str, walls: dict[tuple[str, str], list[float]]) -> float:
    """The mean wall of the saved runs of the same task and method, else the prior rate x C (x 1.15
    for the service, whose last trials overshoot C)."""
    if walls.get((spec.name, method)):
        return statistics.mean(walls[(spec.name, method)])
    rate = PRIOR_SECONDS_PER_1K.get(spec.name, 1.5)
    return rate * spec.total / 1000 * (1.15 if method not in BASELINES else 1.0)


def report_estimate(specs: dict[str, TaskSpec], todo: list[RunKey], done: dict, log=print) -> float:
    walls: dict[tuple[str, str], list[float]] = {}
    for (task, method, _, fp), (_, wall) in done.items():
        if task in specs and fp == todo_fp(todo, task):
            walls.setdefault((task, method), []).append(wall)
    left = [key for key in todo if key not in done]
    whole = sum(estimate_seconds(specs[k[0]], k[1], walls) for k in todo)
    rest = sum(estimate_seconds(specs[k[0]], k[1], walls) for k in left)
    log(f"# estimate: {len(todo)} runs, {len(todo) - len(left)} already saved; the whole grid about "
        f"{whole / 60:.0f} min, what is left about {rest / 60:.0f} min (one process on 2 cores; from the "
        f"saved runs' walls where there are any, else PRIOR_SECONDS_PER_1K)")
    return rest


def todo_fp(todo: list[RunKey], task: str) -> str | None:
    return next((k[3] for k in todo if k[0] == task), None)


def run_grid(specs: dict[str, TaskSpec], seeds: list[int], methods: dict[str, dict | None],
             reference: dict, log=print, save: str | None = None,
             metas: dict[str, dict] | None = None,
             methods_by_task: dict[str, dict[str, dict | None]] | None = None) -> dict[tuple[str, str], Cell]:
    """Every task x method x seed (`methods_by_task`: each task's own methods, e.g. variants resolved
    to its budget). With `save`, each finished run is appended to that file as it completes, and a
    run already in it (same task, method, seed and fingerprint) is read back instead of trained
    again: a stopped run resumes where it stopped. The estimate covers the whole grid."""
    metas = metas or {}
    by_task = methods_by_task or {name: methods for name in specs}
    fps = {name: fingerprint(spec, metas.get(name)) for name, spec in specs.items()}
    done = saved_runs(save) if save else {}
    todo = [(name, label, seed, fps[name]) for name in specs for label in by_task[name] for seed in seeds]
    report_estimate(specs, todo, done, log)
    cells: dict[tuple[str, str], Cell] = {}
    for key in todo:
        name, label, seed, fp = key
        spec = specs[name]
        target = target_for(reference, name, spec, MARGIN) if name in reference else math.nan
        cell = cells.setdefault((name, label), Cell())
        if key in done:
            (records, wall), how = done[key], " (saved)"
        else:
            method = label if label in BASELINES + WSD_BASELINES else "service"
            records, wall = run_method(method, spec, seed, by_task[name][label])
            how = ""
            if save:
                append_run(save, run_to_json(name, label, seed, fp, records, wall, metas.get(name)))
                done[key] = (records, wall)
        cell.runs.append((records, wall))
        hit = compute_to_target(records, target, spec.total, spec.maximize)
        log(f"# {name:12s} {label:22s} seed {seed}: examples {fmt(hit.examples)} seconds "
            f"{fmt(hit.seconds, 's')} best@C {hit.best:.4f} target {target:.4f} "
            f"trials {len(records)} wall {wall:.1f}s{how}")
        if not how and save:
            report_estimate(specs, todo, done, log)
    return cells


def best_within(cell: Cell, total: float, maximize: bool) -> list[float]:
    return [h.best for h in cell.hits(math.nan, total, maximize) if h.best is not None]


def value_spread(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    q = sorted(values)
    k = len(q) // 4
    return f"{q[k]:.4f}-{q[-1 - k]:.4f}"


def print_table(cells: dict[tuple[str, str], Cell], specs: dict[str, TaskSpec], reference: dict,
                labels: Sequence[str], margins: dict[str, float], title: str) -> None:
    """Compute to target at the task's margin (a task without one is left out), and the best value
    within fixed compute (C/4 and C), medians with the interquartile range over seeds."""
    print()
    print(f"compute to target, {title}; IQR over seeds; n/r = not reached within C")
    print(f"{'task':16s} {'method':22s} {'reached':>7s} {'examples (median)':>17s} {'IQR':>13s} "
          f"{'seconds (median)':>16s} {'IQR':>11s} {'best@C/4':>8s} {'best@C (median)':>15s} {'IQR':>15s}")
    for name, spec in specs.items():
        if margins.get(name) is None:
            print(f"{name:16s} (no {title} for this task: see --noise)")
            continue
        margin = margins[name]
        target = target_for(reference, name, spec, margin)
        for label in labels:
            if (name, label) not in cells:
                continue
            cell = cells[(name, label)]
            hits = cell.hits(target, spec.total, spec.maximize)
            examples, seconds = [h.examples for h in hits], [h.seconds for h in hits]
            bests = best_within(cell, spec.total, spec.maximize)
            early = best_within(cell, spec.total / 4, spec.maximize)
            print(f"{name:16s} {label:22s} {sum(h.reached for h in hits):>3d}/{len(hits):<3d} "
                  f"{fmt(median_of(examples)):>17s} {spread(examples):>13s} "
                  f"{fmt(median_of(seconds), 's'):>16s} {spread(seconds, 's'):>11s} "
                  f"{statistics.median(early) if early else float('nan'):>8.4f} "
                  f"{statistics.median(bests) if bests else float('nan'):>15.4f} {value_spread(bests):>15s}")
        what = {"seed_mean": f"reference: mean best of {reference[name].get('seeds')} seeds of the grid's best config",
                "grid_max": "reference: grid maximum, one seed"}.get(reference[name].get("protocol"), "reference")
        what = "best of all runs within C" if reference[name].get("pooled") else what
        print(f"{'':16s} {spec.metric} target {target:.4f} ({what} {reference[name]['best']:.4f} "
              f"{'-' if spec.maximize else '+'} {margin:.4g}), "
              f"budget C = {spec.total} examples = {spec.full_trials} trials of {spec.per_trial}")


def speedups(cells, specs, reference: dict, margins: dict[str, float], service_label: str = "service",
             log=print, against: Sequence[str] = BASELINES) -> dict[str, float]:
    """Per baseline (or `against`: the variants of --compare, each the service without one of its
    mechanisms): the geometric mean over tasks of median(examples to target of the baseline) /
    median(of the service), misses counted as C; each task's ratio is logged beside it."""
    names = [n for n, s in specs.items() if margins.get(n) is not None and (n, service_label) in cells]
    geo = {}
    for base in against:
        if not names or not all((n, base) in cells for n in names):
            continue
        ratios = []
        for name in names:
            spec = specs[name]
            target = target_for(reference, name, spec, margins[name])
            ours = censored_median([h.examples for h in cells[(name, service_label)].hits(
                target, spec.total, spec.maximize)], spec.total)
            theirs = censored_median([h.examples for h in cells[(name, base)].hits(
                target, spec.total, spec.maximize)], spec.total)
            ratios.append((name, theirs / ours, theirs, ours))
        geo[base] = math.exp(sum(math.log(r) for _, r, _, _ in ratios) / len(ratios))
        log(f"# {base} / service, median examples to target: "
            + "; ".join(f"{n} {fmt(a)}/{fmt(b)} = {r:.2f}" for n, r, a, b in ratios)
            + f"; geometric mean {geo[base]:.2f}")
    return geo


def figure_path(path: str, group: str) -> str:
    stem = path[:-4] if path.endswith(".png") else path
    return f"{stem}_{group.replace('-', '_')}.png"


def draw_figure(cells, specs: dict[str, TaskSpec], reference: dict, labels: Sequence[str],
                margin_sets: list[tuple[str, dict]], path: str, title: str, emphasis: str) -> None:
    """benchmarks/efficiency_figure.py over these cells: the tables' runs, drawn."""
    import importlib.util  # matplotlib only when a figure is asked for; found beside this script

    spec = importlib.util.spec_from_file_location("efficiency_figure", Path(__file__).with_name("efficiency_figure.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    draw = module.draw

    panels = []
    for name, spec in specs.items():
        targets = {t: target_for(reference, name, spec, m[name]) for t, m in margin_sets
                   if m.get(name) is not None and name in reference}
        runs = {label: [records for records, _ in cells[(name, label)].runs]
                for label in labels if (name, label) in cells}
        panels.append({"name": name, "metric": spec.metric, "maximize": spec.maximize, "total": spec.total,
                       "cells": runs, "targets": targets})
    draw(panels, labels, lambda records, x, maximize: compute_to_target(records, math.nan, x, maximize).best,
         path, title, emphasis)


def load_runs(paths: Sequence[str], fingerprints: dict[str, str] | None = None) -> dict[tuple[str, str], Cell]:
    """Runs saved with --save (JSON lines), or in the older one-document format; the same task and
    method in several files add up (more seeds). With `fingerprints`, a saved run of a task whose
    fingerprint differs (another compute level or corpus) is left out, with a note."""
    cells: dict[tuple[str, str], Cell] = {}
    seen: set[tuple] = set()  # (task, method, seed, fingerprint): a run saved in two files counts once
    for path in paths:
        raw = Path(path).read_bytes()
        text = (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8")
        try:
            saved = json.loads(text)
        except json.JSONDecodeError:  # several lines: the --save format
            saved = None
        if saved is None or (isinstance(saved, dict) and "task" in saved):
            skipped = repeated = 0
            for item in sorted(read_lines(path), key=lambda i: (i["task"], i["method"], i["seed"])):
                want = (fingerprints or {}).get(item["task"])
                if want is not None and item.get("fingerprint") != want:
                    skipped += 1
                    continue
                key = (item["task"], item["method"], item["seed"], item.get("fingerprint"))
                if key in seen:
                    repeated += 1
                    continue
                seen.add(key)
                cells.setdefault((item["task"], item["method"]), Cell()).runs.append((records_of(item), item["wall"]))
            if skipped:
                print(f"# {path}: {skipped} runs at another compute level or corpus left out", file=sys.stderr)
            if repeated:
                print(f"# {path}: {repeated} runs already read from an earlier file left out", file=sys.stderr)
            continue
        for item in saved["cells"] if isinstance(saved, dict) else saved:
            cell = cells.setdefault((item["task"], item["method"]), Cell())
            cell.runs.extend((records_of(run), run["wall"]) for run in item["runs"])
    return cells


# --- noise: one fixed good configuration, 8 seeds -------------------------------------------------

NOISE_FILE = REFERENCE_FILE.with_name("search_efficiency_noise.json")
NOISE_SEEDS = 8


def load_noise() -> dict:
    return json.loads(NOISE_FILE.read_text()) if NOISE_FILE.exists() else {}


def measure_noise(specs: dict[str, TaskSpec], reference: dict, metas: dict[str, dict] | None = None,
                  seeds: int = NOISE_SEEDS, path: Path = NOISE_FILE, log=print) -> dict:
    """The standard deviation over `seeds` trial seeds of the final metric (and of the best
    evaluation) of the reference's best configuration (batch size, LR; no warmup; the whole per-trial
    budget), trained by the plain loop's recipe. Written to `path` after each task."""
    noise = json.loads(path.read_text()) if path.exists() else {}
    for name, spec in specs.items():
        entry = reference.get(name)
        if not entry or "best_params" not in entry:
            raise SystemExit(f"{name}: no reference configuration; run --make-reference --tasks {name} first")
        config = entry["best_params"]
        started = time.perf_counter()
        trainer = PlainTrainer(spec, started)
        finals, bests = [], []
        with one_thread():
            for seed in range(seeds):
                try:
                    trainer.train(seed, config["batch_size"], config["lr"], spec.epochs, 0.0)
                except optuna.TrialPruned:
                    pass
                values = [e.value for e in trainer.records[-1].evaluations]
                finals.append(values[-1] if len(values) == spec.epochs else math.nan)
                pick = max if spec.maximize else min
                bests.append(pick(values) if values else math.nan)
        ok = [v for v in finals if math.isfinite(v)]
        noise[name] = {
            "config": dict(config, epochs=spec.epochs, warmup_fraction=0.0), "seeds": list(range(seeds)),
            "final": finals, "best": bests,
            "std_final": statistics.stdev(ok) if len(ok) > 1 else math.nan,
            "std_best": statistics.stdev([v for v in bests if math.isfinite(v)]) if len(ok) > 1 else math.nan,
            "fingerprint": fingerprint(spec, (metas or {}).get(name), total=False),
            "seconds": round(time.perf_counter() - started, 1),
        }
        log(f"# noise {name}: std of the final {spec.metric} over {seeds} seeds {noise[name]['std_final']:.4g} "
            f"(of the best evaluation {noise[name]['std_best']:.4g}); second margin 2 x std = "
            f"{2 * noise[name]['std_final']:.4g}")
        path.write_text(json.dumps(noise, indent=2) + "\n")
    return noise


# The reference a target is measured from (docs/search_efficiency.md, "The reference protocol"; decided
# on the development tasks before any held-out run). "seed_mean": the mean over the noise seeds of
# the best evaluation of the grid's best configuration, a value that configuration delivers on
# average. "grid_max": the old one, the best single-seed trial of the grid, inflated by being a
# maximum of 60 noisy trials; kept to re-analyse the earlier runs (the figures before issue 17).
REFERENCE_PROTOCOLS = ("seed_mean", "grid_max")
DEFAULT_REFERENCE = "seed_mean"


def resolve_reference(reference: dict, noise: dict, specs: dict[str, TaskSpec], metas: dict[str, dict] | None = None,
                      protocol: str = DEFAULT_REFERENCE, log=print) -> dict:
    """The reference value per task under `protocol`. With "seed_mean" a task has one only when its
    noise entry matches its per-trial level and was measured on the reference's best configuration
    (a remade grid makes the noise stale); otherwise it is left out, with a note (and the analysis
    then falls back to the best of the runs, marked as such): never the grid maximum in disguise."""
    if protocol == "grid_max":
        return {name: dict(entry, protocol="grid_max") for name, entry in reference.items()}
    if protocol != "seed_mean":
        raise ValueError(f"unknown reference protocol {protocol!r}")
    out = {}
    for name, spec in specs.items():
        entry, measured = reference.get(name), noise.get(name)
        if not entry or "best_params" not in entry:
            continue  # no grid yet: handled by the caller like before
        why = None
        if not measured:
            why = f"no noise entry (--noise --tasks {name})"
        elif measured.get("fingerprint") != fingerprint(spec, (metas or {}).get(name), total=False):
            why = "the noise was measured at another per-trial level or corpus"
        elif {k: measured["config"].get(k) for k in ("batch_size", "lr")} != entry["best_params"]:
            why = "the noise was measured on another configuration than the grid's best (remade grid?)"
        bests = [v for v in (measured or {}).get("best", []) if math.isfinite(v)]
        if why is None and len(bests) < 2:
            why = "fewer than 2 finite seeds in the noise entry"
        if why:
            log(f"# {name}: no seed-mean reference: {why}; --reference grid_max gives the old one")
            continue
        out[name] = {"best": statistics.mean(bests), "protocol": "seed_mean", "seeds": len(bests),
                     "grid_best": entry["best"], "best_params": entry["best_params"]}
    return out


def noise_margins(noise: dict, specs: dict[str, TaskSpec], metas: dict[str, dict] | None = None) -> dict:
    """The second margin per task: twice the measured noise (no larger, as the issue asks); None for
    a task whose noise was not measured at this compute level."""
    out = {}
    for name, spec in specs.items():
        entry = noise.get(name)
        ok = entry and entry.get("fingerprint") == fingerprint(spec, (metas or {}).get(name), total=False)
        out[name] = 2 * entry["std_final"] if ok and math.isfinite(entry["std_final"]) else None
    return out


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
    # issue 17's candidates: a warmup-stable-decay schedule (the default since issue 17), with rung
    # evaluations on a cooldown branch (their examples counted as compute), and the pruner's noise
    # guard; the schedule=cosine ones are the defaults before issue 17, alone and with each change
    "schedule=wsd": {"schedule": {"name": "wsd"}},
    "schedule=wsd+cooldown": {"schedule": {"name": "wsd", "cooldown_evaluations": True}},
    "noise_margin=1": {"pruner": {"noise_margin": 1.0}},
    "noise_margin=2": {"pruner": {"noise_margin": 2.0}},
    "schedule=cosine": {"schedule": {"name": "cosine"}},
    "schedule=cosine,pruner=none": {"schedule": {"name": "cosine"}, "pruner": {"name": "none"}},
    "schedule=cosine,sampler=random": {"schedule": {"name": "cosine"}, "sampler": {"name": "random"}},
    "schedule=cosine,noise_margin=1": {"schedule": {"name": "cosine"}, "pruner": {"noise_margin": 1.0}},
    "schedule=cosine,noise_margin=2": {"schedule": {"name": "cosine"}, "pruner": {"noise_margin": 2.0}},
}


def resolve_variant(overrides: dict | None, spec: TaskSpec) -> dict | None:
    if overrides is None:
        return None
    out = copy.deepcopy(overrides)
    if "budget" in out and isinstance(out["budget"].get("eval_every"), str):
        out["budget"]["eval_every"] = max(1, spec.per_trial // int(out["budget"]["eval_every"]))
    return out


def make_reference(specs: dict[str, TaskSpec], metas: dict[str, dict] | None = None) -> None:
    """A grid run once per task: every batch size x 10 LRs (log-spaced over the searched range),
    coupling none, the whole per-trial budget, no pruning; the best value is the reference. The
    tasks named are (re)written into the reference file; the others in it are kept."""
    reference = load_reference() if REFERENCE_FILE.exists() else {}
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
            if name in HELD_OUT or name not in DEFAULT_TASKS:  # the older entries predate fingerprints
                reference[name]["fingerprint"] = fingerprint(spec, (metas or {}).get(name), total=False)
            print(name, reference[name], flush=True)
            REFERENCE_FILE.write_text(json.dumps(reference, indent=2) + "\n")


def expand_tasks(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for task in GROUPS.get(name, (name,)):
            if task not in out:
                out.append(task)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 seeds, 4 full trials' compute per method, development tasks only (a smoke run)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method and task (default 5; 2 quick)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS) + ["char_lm"] + sorted(GROUPS), default=None,
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
    parser.add_argument("--methods", nargs="+", choices=METHODS + WSD_BASELINES, default=list(METHODS),
                        help="run only these methods (the speedups need the service and a baseline); "
                             "NAME+wsd: that baseline training with the service's wsd schedule instead of cosine")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--figure", metavar="PNG",
                        help="also draw best value against compute per task, one line per method or "
                             "variant (medians, IQR bands, both targets), to this PNG; one file per "
                             "task group, the group's name added before .png")
    parser.add_argument("--service-label", default="service",
                        help="with --load: the saved variant (from --compare) to rate against the baselines")
    args = parser.parse_args(argv)
    if args.save and args.save.endswith(".gz"):
        parser.error("--save appends JSON lines to a plain file; gzip it afterwards (--load reads .gz)")
    optuna.logging.set_verbosity(logging.WARNING)
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


if __name__ == "__main__":
    main()
