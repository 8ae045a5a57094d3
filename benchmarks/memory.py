"""Peak anonymous memory of the service's trainer on memory-mapped files of 1 GiB and 4 GiB.

Writes two raw uint8 files of CIFAR-like rows (3072 image bytes and one label byte per row; in
chunks, so the writer never holds more than one chunk), then for each trains the service's
`Trainer` (a small MLP, SGD, cosine schedule, an `updates` budget, the Dataset path with
`--loader-workers` DataLoader workers) in a child process on a map-style Dataset over `np.memmap`
that returns one example at a time. The validation set is the file's last `--val-rows` rows.
A thread here polls `/proc/<pid>/status` of the child and all its descendants (its loader
workers) every `--interval` seconds and keeps the peaks of their summed RssAnon and, for
contrast, VmRSS: RSS also counts the mapped file's pages once read, RssAnon does not. Each
process's RssAnon counts the anonymous pages it shares copy-on-write with the trainer (workers are
forked), so the sum counts those more than once, the same way for both files.
Last line: `rssanon_4gb_vs_1gb=<median peak total RssAnon on 4 GiB / on 1 GiB>` (runs alternate; the
peak includes a short spike at evaluation that a 50 ms sampler catches or not, so one run is noisy).

    python benchmarks/memory.py                       # files in a temp dir under /var/tmp, removed after
    python benchmarks/memory.py --dir /var/tmp/rows --keep   # write once, reuse on the next run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PIXELS = 3 * 32 * 32
ROW = PIXELS + 1  # the label is the row's last byte
CHUNK_ROWS = 16384  # ~50 MB written at a time
SIZES_GIB = (1, 4)


def rows_in(gib: int) -> int:
    return gib * 2**30 // ROW


def write_rows(path: Path, rows: int, seed: int) -> bool:
    """The file of `rows` rows, written once: False when it already exists with the right size."""
    if path.exists() and path.stat().st_size == rows * ROW:
        return False
    rng = np.random.default_rng(seed)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as out:
        for start in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - start)
            chunk = np.frombuffer(rng.bytes(n * ROW), dtype=np.uint8).reshape(n, ROW).copy()
            chunk[:, PIXELS] = chunk[:, 0] % 10  # a label the model can learn from the first pixel
            out.write(chunk.tobytes())
    partial.replace(path)
    return True


# --- the child: one training run ------------------------------------------------------------


def memmap_dataset_class():
    import torch
    from torch.utils.data import Dataset

    class MemmapRows(Dataset):
        """Rows [start, stop) of the file, one example per `__getitem__`. The memmap is opened
        lazily in each process and never pickled (pickling a memmap copies the whole array)."""

        def __init__(self, path: str, rows: int, start: int, stop: int):
            self.path, self.rows, self.start, self.stop = path, rows, start, stop
            self.array: np.memmap | None = None

        def __len__(self) -> int:
            return self.stop - self.start

        def __getitem__(self, i: int):
            if self.array is None:
                self.array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.rows, ROW))
            row = np.array(self.array[self.start + i])  # a copy of one row: the file's pages stay mapped
            return torch.from_numpy(row[:PIXELS]), torch.tensor(int(row[PIXELS]), dtype=torch.long)

        def __getstate__(self):
            return {**self.__dict__, "array": None}

    return MemmapRows


def train_child(args: argparse.Namespace) -> None:
    import torch
    from torch import nn

    from objectives.task import Task, accuracy
    from objectives.training.budget import Budget, plan_trial
    from objectives.training.data import LoaderOptions
    from objectives.training.loop import Trainer
    from objectives.training.options import TrainerOptions
    from objectives.training.schedule import Schedule

    class Pixels(nn.Module):
        def forward(self, x):
            return x.float().div(255.0)

    rows = os.path.getsize(args.train) // ROW
    rows_class = memmap_dataset_class()
    train = rows_class(args.train, rows, 0, rows - args.val_rows)
    val = rows_class(args.train, rows, rows - args.val_rows, rows)
    torch.manual_seed(0)
    model = nn.Sequential(Pixels(), nn.Linear(PIXELS, 128), nn.ReLU(), nn.Linear(128, 10))
    task = Task(model, train, val, nn.functional.cross_entropy, accuracy)
    task.validate()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    budget = Budget("updates", args.updates, args.updates)  # one evaluation, at the end
    plan = plan_trial(budget, task.n_train, args.batch_size)
    schedule = Schedule.build(args.lr, plan.planned_updates, 0.05, "cosine", 0.0)
    trainer = Trainer(task, opt, schedule, plan, budget,
                      TrainerOptions(maximize=True, loader=LoaderOptions(workers=args.loader_workers)), seed=0)
    result = trainer.train()
    print(json.dumps({"n_train": task.n_train, "updates": result.updates, "seconds": result.train_seconds,
                      "stop_reason": result.stop_reason, "val_accuracy": result.best_value}), flush=True)


# --- the parent: sampling /proc -------------------------------------------------------------


def children_map() -> dict[int, list[int]]:
    """ppid -> pids, from /proc/*/stat (/proc/<pid>/task/*/children needs CONFIG_PROC_CHILDREN)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(root: int) -> list[int]:
    kids, found, todo = children_map(), [], [root]
    while todo:
        for child in kids.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def status_kb(pid: int) -> tuple[int, int] | None:
    """(RssAnon, VmRSS) in kB, or None once the process is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "VmRSS"):
                    values[key] = int(rest.split()[0])
    except OSError:
        return None
    if "RssAnon" not in values:  # a zombie has no memory lines
        return None
    return values["RssAnon"], values["VmRSS"]


class Sampler(threading.Thread):
    """Peaks, in kB, of the trainer's, its descendants' summed, and the total RssAnon and VmRSS."""

    KEYS = ("trainer", "workers", "total")

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.anon = dict.fromkeys(self.KEYS, 0)
        self.rss = dict.fromkeys(self.KEYS, 0)
        self.samples = 0
        self.most_workers = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval)

    def sample(self) -> None:
        own = status_kb(self.pid)
        if own is None:
            return
        others = [m for m in map(status_kb, descendants(self.pid)) if m is not None]
        self.samples += 1
        self.most_workers = max(self.most_workers, len(others))
        for peaks, i in ((self.anon, 0), (self.rss, 1)):
            workers = sum(m[i] for m in others)
            for key, value in zip(self.KEYS, (own[i], workers, own[i] + workers)):
                peaks[key] = max(peaks[key], value)


def measure(path: Path, args: argparse.Namespace) -> tuple[Sampler, dict]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(path),
               "--updates", str(args.updates), "--batch-size", str(args.batch_size),
               "--loader-workers", str(args.loader_workers), "--val-rows", str(args.val_rows),
               "--lr", str(args.lr)]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    sampler = Sampler(child.pid, args.interval)
    sampler.start()
    out, _ = child.communicate()
    sampler.done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"training on {path} failed (exit {child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - started
    return sampler, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", help="folder of the data files (default: a temp dir under /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data files (and the folder) afterwards")
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--val-rows", type=int, default=10000, help="the file's last rows, the validation set")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples of /proc")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per file, alternating; the ratio is of the median peaks (default 3)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the training process: train on this file
    args = parser.parse_args()
    if args.child:
        args.train = args.child
        train_child(args)
        return
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="sweeps-memory-", dir="/var/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {gib: folder / f"rows_{gib}gib.u8" for gib in SIZES_GIB}
    try:
        for gib, path in paths.items():
            started = time.perf_counter()
            wrote = write_rows(path, rows_in(gib), seed=gib)
            print(f"{path}: {rows_in(gib)} rows of {ROW} bytes, "
                  + (f"written in {time.perf_counter() - started:.1f} s" if wrote else "reused"), flush=True)
        peaks: dict[int, list[float]] = {gib: [] for gib in paths}
        for gib, path in [item for _ in range(args.repeats) for item in paths.items()]:
            sampler, result = measure(path, args)
            peaks[gib].append(sampler.anon["total"])
            print(f"{gib} GiB file: {result['n_train']} training rows, {result['updates']} updates of "
                  f"{args.batch_size}, {args.loader_workers} loader workers ({sampler.most_workers} descendants "
                  f"seen), {result['seconds']:.1f} s training, {result['wall']:.1f} s in all, "
                  f"{sampler.samples} samples, val_accuracy {result['val_accuracy']:.3f}")
            for label, kb in (("RssAnon", sampler.anon), ("RSS", sampler.rss)):
                print(f"  peak {label:<8} MB: trainer {kb['trainer'] / 1024:8.1f}  "
                      f"workers {kb['workers'] / 1024:8.1f}  total {kb['total'] / 1024:8.1f}")
        medians = {gib: statistics.median(values) for gib, values in peaks.items()}
        for gib, values in peaks.items():
            print(f"{gib} GiB: peak total RssAnon MB per run {', '.join(f'{v / 1024:.0f}' for v in values)}; "
                  f"median {medians[gib] / 1024:.0f}")
        print(f"rssanon_4gb_vs_1gb={medians[4] / medians[1]:.3f}")
    finally:
        if not args.keep:
            for path in paths.values():
                path.unlink(missing_ok=True)
                path.with_suffix(".partial").unlink(missing_ok=True)
            if not args.dir:
                shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
