"""The benchmark's tasks and fixed settings: the search ranges, each task's per-trial budget and
total compute C, the development / held-out split, and char_lm's corpus (the standard library's
*.py files). `fingerprint` is what a saved run, a reference or a noise entry must match to be used."""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    # issue 30's tasks: the factory (a built-in name or module:factory; default `name`), the
    # optimizer every method trains with (the service's objective.optimizer), its weight decay,
    # the task's LR range (AdamW's is not SGD's) and its model family
    factory: str | None = None
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    lr_range: tuple[float, float] = LR_RANGE
    family: str = ""
    eval_charge: float = 0.0  # issue 30: what one evaluation is charged, in training examples (CHARGE_FILE)
    # issue 30: the frozen service configuration's budget.horizons in examples (ascending, ending
    # with per_trial), when it has them: every method's evaluation points instead of the grid
    horizons: tuple[float, ...] | None = None

    @property
    def task(self) -> str:
        return self.factory or self.name

    @property
    def per_trial(self) -> int:
        return self.epochs * self.n_train

    @property
    def evaluations_per_trial(self) -> int:
        """A full trial's evaluations on the service's grid (every per_trial / 10 examples, floored,
        and one more at the end when that is off the grid)."""
        if self.horizons:
            return len(self.horizons)
        every = max(1, self.per_trial // 10)
        return self.per_trial // every + (1 if self.per_trial % every else 0)

    @property
    def total(self) -> float:
        """The total compute C: `full_trials` full trials, each with its evaluations charged when
        `eval_charge` is set (issue 30), in training examples."""
        return self.full_trials * (self.per_trial + self.evaluations_per_trial * self.eval_charge)


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


def char_lm_spec(corpus: dict, windows: int, epochs: int, full_trials: int, val_blocks: int,
                 name: str = "char_lm", model: dict | None = None, **fields) -> TaskSpec:
    """char_lm on the corpus: `windows` training windows of block_size characters spread evenly over
    the training part (the task's stride option), the last `val_blocks` blocks held out. `name`,
    `model` (CHAR_LM_OPTIONS's keys) and `fields` (TaskSpec's): issue 30's variants."""
    model = dict(CHAR_LM_OPTIONS, **(model or {}))
    block = model["block_size"]
    val_fraction = val_blocks * block / corpus["chars"]
    n_train_chars = corpus["chars"] - int(corpus["chars"] * val_fraction)
    stride = max(block, (n_train_chars - block - 1) // max(windows - 1, 1))
    options = dict(model, path=corpus["path"], val_fraction=val_fraction, stride=stride, max_train=windows)
    if name != "char_lm":
        fields.setdefault("factory", "char_lm")
    return TaskSpec(name, windows, epochs, full_trials, options, metric="val_loss", maximize=False, **fields)


# the compute level for a 2-core CPU: 2048 windows (131k characters sampled across the corpus), 4 epochs
# of them per trial (8192 examples), C = 10 such trials per method and seed (4 with --quick)
CHAR_LM_LEVEL = {"windows": 2048, "epochs": 4, "full_trials": 10, "val_blocks": 512}


def fingerprint(spec: TaskSpec, meta: dict | None = None, total: bool = True) -> str:
    """What a saved run must match to be reused: the task, its data and its compute level (for
    char_lm the corpus's sha256, not the path of the file it was written to). `total=False`: the
    per-trial level only (what a reference or a noise measurement depends on)."""
    options = {k: v for k, v in spec.options.items() if k != "path"}
    corpus = ((meta or {}).get("corpus") or {}).get("sha256") if spec.task == "char_lm" else None
    out = {"task": spec.name, "n_train": spec.n_train, "epochs": spec.epochs,
           "full_trials": spec.full_trials if total else None, "options": options, "corpus_sha256": corpus}
    if spec.factory or spec.optimizer != "sgd" or spec.lr_range != LR_RANGE:  # issue 30's tasks
        out.update(factory=spec.task, optimizer=spec.optimizer, weight_decay=spec.weight_decay,
                   lr_range=list(spec.lr_range))
    if spec.eval_charge and total:  # the charge changes C, not what one trial trains
        out.update(eval_charge=spec.eval_charge)
    if spec.horizons and total:  # the evaluation points, not the task: a reference or noise entry stands
        out.update(horizons=list(spec.horizons))
    return json.dumps(out, sort_keys=True)


def expand_tasks(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for task in GROUPS.get(name, (name,)):
            if task not in out:
                out.append(task)
    return out


# --- issue 30: the held-out tasks (docs/search_efficiency.md, "Issue 30: protocol") -------------
# Fixed before any result: names, sizes, optimizers and budgets. Three model families (MLP,
# ResNet, character GPT), three with AdamW, one streaming a Dataset from disk. Each is sized for
# about 5 s per full trial on one core (the timings in the protocol, `--time-trials`).

ADAMW_LR = (1e-4, 3e-2)
ADAMW_DECAY = 0.01  # torch's AdamW default, fixed (not searched)
STREAM_FACTORY = "benchmarks.search_efficiency_lib.stream_task:teacher_stream"
ISSUE30_FULL_TRIALS = 20  # the budget C of every held-out run: 20 full trials
ISSUE30_SEEDS = 12
ISSUE30_CHAR_CORPUS_MB = 4.0  # the first 4 MB of the stdlib's *.py files (build_corpus)

ISSUE30_TASKS = {
    "mlp_teacher_deep": TaskSpec(
        "mlp_teacher_deep", 8192, epochs=12, full_trials=ISSUE30_FULL_TRIALS, factory="teacher_mlp", family="mlp",
        options={"dim": 16, "classes": 6, "teacher_width": 48, "n_train": 8192, "n_val": 2048,
                 "label_noise": 0.1, "data_seed": 30, "width": 128, "depth": 4}),
    "mlp_stream_adamw": TaskSpec(
        "mlp_stream_adamw", 8192, epochs=8, full_trials=ISSUE30_FULL_TRIALS, factory=STREAM_FACTORY, family="mlp",
        optimizer="adamw", weight_decay=ADAMW_DECAY, lr_range=ADAMW_LR,
        options={"dim": 32, "classes": 8, "teacher_width": 64, "n_train": 8192, "n_val": 2048,
                 "label_noise": 0.15, "data_seed": 31, "width": 256, "depth": 2}),
    "resnet_sgd": TaskSpec(
        "resnet_sgd", 2048, epochs=3, full_trials=ISSUE30_FULL_TRIALS, factory="resnet_synthetic", family="resnet",
        options={"width": 8, "blocks": 1, "n_train": 2048, "n_val": 512, "classes": 10, "noise": 2.5,
                 "data_seed": 30}),
    "resnet_adamw": TaskSpec(
        "resnet_adamw", 2048, epochs=3, full_trials=ISSUE30_FULL_TRIALS, factory="resnet_synthetic", family="resnet",
        optimizer="adamw", weight_decay=ADAMW_DECAY, lr_range=ADAMW_LR,
        options={"width": 8, "blocks": 1, "n_train": 2048, "n_val": 512, "classes": 6, "noise": 3.0,
                 "data_seed": 31}),
}
# the two character GPTs need the corpus (built by issue30_specs): name -> char_lm_spec's arguments
ISSUE30_CHAR_LM = {
    "gpt_char_adamw": {"windows": 2048, "epochs": 3, "val_blocks": 256, "family": "gpt", "optimizer": "adamw",
                       "weight_decay": ADAMW_DECAY, "lr_range": ADAMW_LR,
                       "model": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 48}},
    "gpt_char_sgd": {"windows": 2048, "epochs": 3, "val_blocks": 256, "family": "gpt",
                     "model": {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 64}},
}
HELD_OUT_30 = tuple(ISSUE30_TASKS) + tuple(ISSUE30_CHAR_LM)
# the development tasks of issue 30 are issue 17's (the service's mechanisms are chosen there)
DEVELOPMENT_30 = DEVELOPMENT
GROUPS["held_out_30"] = HELD_OUT_30
PRIOR_SECONDS_PER_1K.update({  # placeholders until --time-trials measures them (docs: the protocol's table)
    "mlp_teacher_deep": 0.1, "mlp_stream_adamw": 0.3, "resnet_sgd": 1.5, "resnet_adamw": 1.5,
    "gpt_char_adamw": 1.5, "gpt_char_sgd": 1.5})


def issue30_specs(names: Sequence[str], full_trials: int = ISSUE30_FULL_TRIALS,
                  corpus: dict | None = None) -> tuple[dict[str, TaskSpec], dict[str, dict]]:
    """Issue 30's specs for `names` (held-out ones, or development ones at their own budgets), with
    `full_trials` full trials of budget, and the metas (the corpus) of the character GPTs."""
    specs: dict[str, TaskSpec] = {}
    metas: dict[str, dict] = {}
    for name in names:
        if name in ISSUE30_CHAR_LM:
            corpus = corpus or build_corpus(ISSUE30_CHAR_CORPUS_MB)
            level = dict(ISSUE30_CHAR_LM[name])
            specs[name] = char_lm_spec(corpus, level.pop("windows"), level.pop("epochs"), full_trials,
                                       level.pop("val_blocks"), name=name, **level)
            metas[name] = {"corpus": corpus}
        else:
            base = ISSUE30_TASKS.get(name) or TASKS[name]
            specs[name] = TaskSpec(**{**base.__dict__, "full_trials": full_trials})
    return specs, metas
