"""`python -m sweeps.probe STUDY.yaml`: the largest micro-batch that fits, and where speed plateaus.

Doubling, then bisection between the last size that fit and the first that ran out of memory.
Each size is timed in samples of updates (at least MIN_UPDATES in all) until the relative standard
error of its examples/s is under TARGET_RSE, or for at most MAX_SECONDS; the knee it states is
read from the table it prints.
The result (with a safety margin) is stored on the study under the device's model (GPU name, or
"cpu"), so every worker on that model starts from it and trials split larger batches into
micro-batches up front instead of rediscovering the limit; workers on other models ignore it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch.utils.data import default_collate

from objectives.task import Task
from objectives.training.batches import to_device
from objectives.training.coupling import Coupled
from objectives.training.step import Step, TrainState
from sweeps import exits
from sweeps.cli import add_study_arguments, fail, run_command
from sweeps.config.study_file import SweepConfig, load_config
from sweeps.config.target import target_of
from sweeps.loop.runner import build_reference_task, open_study
from sweeps.text import table
from sweeps.trial.record import PROBE_ATTR, PROBED_MICRO_BATCH_ATTR
from sweeps.trial.run_one import (
    build_optimizer,
    compile_model,
    device_model,
    resolve_device,
)

PLATEAU_GAIN = 1.10  # a larger batch must buy at least 10% more examples/s
MIN_UPDATES = 20  # timed updates per size, at least
TARGET_RSE = 0.05  # time a size until its examples/s has a relative standard error under 5%
MAX_SECONDS = 2.0  # ... or for this long: the probe stays quick (the row is marked)
SAMPLE_SECONDS = 0.02  # one timing sample: updates back to back for this long, so jitter averages out
MIN_SAMPLES = 5  # samples per size, at least: the standard error needs a few


@dataclass
class Measurement:
    micro_batch: int
    fits: bool
    examples_per_second: float = 0.0
    peak_memory_mb: float | None = None
    relative_se: float = 0.0  # of examples_per_second
    updates: int = 0  # timed
    settled: bool = True  # timed to TARGET_RSE, not stopped by MAX_SECONDS first


def relative_se(seconds: list[float]) -> float:
    """The relative standard error of the mean time of equal samples, which is that of examples/s."""
    if len(seconds) < 2:
        return math.inf
    return statistics.stdev(seconds) / math.sqrt(len(seconds)) / statistics.fmean(seconds)


def settled(samples: list[float], per_sample: int) -> bool:
    return (len(samples) >= MIN_SAMPLES and len(samples) * per_sample >= MIN_UPDATES
            and relative_se(samples) < TARGET_RSE)


def measure(task: Task, step: Step, state: TrainState, micro_batch: int, device: torch.device,
            max_seconds: float = MAX_SECONDS) -> Measurement:
    """Train at this micro-batch with the trials' step (after a warm-up) in timed samples of equal
    update counts, each about SAMPLE_SECONDS long, until examples/s is known to TARGET_RSE over at
    least MIN_UPDATES updates and MIN_SAMPLES samples, or for `max_seconds`."""
    if isinstance(task.train, tuple | list):
        x, y = task.train
        gen = torch.Generator(device=x.device).manual_seed(0)
        idx = torch.randint(0, len(x), (micro_batch,), device=x.device, generator=gen)
        batch = (x[idx], y[idx])
    else:  # a Dataset: its first examples, repeated up to the micro-batch
        n = len(task.train)
        batch = to_device(default_collate([task.train[i % n] for i in range(micro_batch)]), device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def timed(updates: int) -> float:
        started = time.perf_counter()
        for _ in range(updates):
            step(state, batch)
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    samples: list[float] = []
    try:
        timed(1)  # the warm-up
        per_sample = max(1, int(SAMPLE_SECONDS / timed(1)))
        while not settled(samples, per_sample) and sum(samples) < max_seconds:
            samples.append(timed(per_sample))
    except torch.cuda.OutOfMemoryError:
        state.optimizer.zero_grad(set_to_none=True)
        del batch
        if cuda:
            torch.cuda.empty_cache()
        return Measurement(micro_batch, fits=False)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    updates = len(samples) * per_sample
    return Measurement(micro_batch, True, updates * micro_batch / sum(samples), peak, relative_se(samples), updates,
                       settled(samples, per_sample))


def probe(task: Task, step: Step, state: TrainState, device: torch.device, limit: int,
          start: int = 1) -> list[Measurement]:
    """Measurements in the order tried: doubling from `start` up to `limit`, then bisection."""
    tried: list[Measurement] = []
    size, good, bad = start, 0, None
    while size <= limit:
        m = measure(task, step, state, size, device)
        tried.append(m)
        if not m.fits:
            bad = size
            break
        good = size
        size *= 2
    if bad is None and good < limit:
        m = measure(task, step, state, limit, device)
        tried.append(m)
        good, bad = (limit, None) if m.fits else (good, limit)
    while bad is not None and bad - good > max(1, good // 32):  # ~3%: finer buys nothing
        middle = (good + bad) // 2
        m = measure(task, step, state, middle, device)
        tried.append(m)
        good, bad = (middle, bad) if m.fits else (good, middle)
    return tried


def largest_fit(tried: list[Measurement]) -> int:
    return max((m.micro_batch for m in tried if m.fits), default=0)


def plateau(tried: list[Measurement]) -> int | None:
    """The smallest size than which no larger size in the table is PLATEAU_GAIN times faster (None:
    each has a faster one above it, the largest included as it has none to compare with)."""
    fits = sorted((m for m in tried if m.fits), key=lambda m: m.micro_batch)
    for i, m in enumerate(fits[:-1]):
        if max(big.examples_per_second for big in fits[i + 1:]) < PLATEAU_GAIN * m.examples_per_second:
            return m.micro_batch
    return None


def with_margin(size: int, margin: float) -> int:
    return max(1, int(size * (1.0 - margin)))


def format_probe(tried: list[Measurement], stored: int, limit: int, device: torch.device) -> str:
    lines = [f"device {device}: micro-batch sizes tried (doubling, then bisection); examples/s over the "
             f"updates timed, se% its relative standard error"]
    rows = []
    for m in tried:
        speed, se, n = (f"{m.examples_per_second:.0f}", f"{100 * m.relative_se:.1f}", m.updates) if m.fits \
            else (None, None, None)
        rows.append({"micro_batch": m.micro_batch, "fits": "yes" if m.fits else "OOM", "examples/s": speed,
                     "se%": se, "updates": n,
                     "peak MB": None if m.peak_memory_mb is None else f"{m.peak_memory_mb:.0f}",
                     "": "" if not m.fits or m.settled else "*"})  # timed up to the cap
    if rows:
        lines.append(table(rows, left=("",)))
    if any(m.fits and not m.settled for m in tried):
        lines.append(f"* timing stopped at the {MAX_SECONDS:g} s cap before {100 * TARGET_RSE:g}% standard error "
                     f"over {MIN_UPDATES} updates")
    biggest = largest_fit(tried)
    if biggest >= limit:
        lines.append(f"every candidate batch size up to {limit} fits as one micro-batch")
    else:
        lines.append(f"largest micro-batch that fits: {biggest}; stored with margin: {stored}")
    flat = plateau(tried)
    if flat is not None:
        at = {m.micro_batch: m.examples_per_second for m in tried if m.fits}
        fastest = max(at, key=at.get)
        lines.append(f"throughput stops growing past batch size ~{flat}: {at[flat]:.0f} examples/s, and no larger "
                     f"size is {PLATEAU_GAIN - 1:.0%} faster (the fastest, {fastest}, runs {at[fastest]:.0f}); larger "
                     "batches buy no speed on this device (Tuning Playbook), so the search range need not go far "
                     "beyond it")
    else:
        lines.append(f"throughput still grows at the largest size tried: each size has a larger one at least "
                     f"{PLATEAU_GAIN - 1:.0%} faster")
    return "\n".join(lines)


def trial_step(config: SweepConfig, task: Task, device: torch.device) -> tuple[Step, TrainState]:
    """The step a trial trains with (`objectives.training.step`): its precision and, with
    `objective.compile`, the compiled model. Each micro-batch size is measured as one micro-batch,
    which is what a trial's split batch runs."""
    compile_model(task, config.objective)
    optimizer = build_optimizer(config.objective, task.model.parameters(), Coupled(config.search.reference_lr()))
    return Step(task, device, precision=config.objective.precision), TrainState(task.model, optimizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sweeps probe", description=__doc__.splitlines()[0],
                                     epilog="example:\n  sweeps probe study.yaml --limit 4096\n",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--limit", type=int, help="largest size to try (default: the largest batch searched)")
    parser.add_argument("--margin", type=float, default=0.1, help="safety margin (default 0.1)")
    parser.add_argument("--no-store", action="store_true", help="print only; do not store on the study")
    args = parser.parse_args(argv)
    return run_command(lambda: probe_study(args), args.study_file)


def probe_study(args: argparse.Namespace) -> int:
    config = load_config(args.study_file)
    target = None if args.no_store else target_of(config, args.storage, args.study_name)  # checked before probing
    device = resolve_device(config.objective.device, config.objective.gpu_memory_fraction)
    task = build_reference_task(config, max(config.search.batch_sizes()), device).to(device)
    step, state = trial_step(config, task, device)
    limit = args.limit or max(config.search.batch_sizes())
    tried = probe(task, step, state, device, limit)
    biggest = largest_fit(tried)
    if biggest == 0:
        return fail(exits.FAILED, "not even a micro-batch of 1 fits on this device")
    stored = biggest if biggest >= limit else with_margin(biggest, args.margin)
    print(format_probe(tried, stored, limit, device))
    if target is not None:
        study = open_study(config, target, task.n_train, changes="skip")  # a probe changes no search
        model = device_model(device)  # one limit per device model; a plain int from before is dropped
        kept = study.user_attrs.get(PROBED_MICRO_BATCH_ATTR)
        study.set_user_attr(PROBED_MICRO_BATCH_ATTR, {**(kept if isinstance(kept, dict) else {}), model: stored})
        study.set_user_attr(PROBE_ATTR, {
            "device": str(device), "device_model": model, "largest_fit": biggest, "limit": limit,
            "tried": [[m.micro_batch, m.fits, round(m.examples_per_second, 1)] for m in tried],
        })
        print(f"stored {PROBED_MICRO_BATCH_ATTR}={stored} for {model!r} on study {target.study_name!r}")
    return exits.OK


if __name__ == "__main__":
    sys.exit(main())
