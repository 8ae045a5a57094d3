"""How many cores this process may use, and the loader's default worker count (no torch here:
the study file fills its defaults with it, and the read-only commands must not import torch).

The rule: a process may use `cores_per_worker` cores, the fewest of its CPU affinity and
`OMP_NUM_THREADS` (which `--workers N` sets to cores // N for each worker). A Dataset's loader
takes `max(0, cores_per_worker - 1)` worker processes by default, leaving one core to the
training process; when the loader's processes and torch's threads would together exceed the
cores, the trainer lowers torch's threads to the cores the loader leaves (at least one).
"""

from __future__ import annotations

import os


def cores_per_worker(environ: dict[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.strip().isdigit() and int(threads) >= 1:
        cores = min(cores, int(threads))
    return max(1, cores)


def default_loader_workers(environ: dict[str, str] | None = None) -> int:
    return max(0, cores_per_worker(environ) - 1)
