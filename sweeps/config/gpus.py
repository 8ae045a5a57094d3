"""`--gpus all|0,2,3`: one GPU per worker, numbered as `nvidia-smi` numbers them.

Each worker process is started with `CUDA_VISIBLE_DEVICES=<its index>` and
`CUDA_DEVICE_ORDER=PCI_BUS_ID` in its environment, so it sees its own GPU only (as `cuda:0`),
and CUDA's numbering matches `nvidia-smi` (CUDA's default order is fastest first). The variables
must be set before CUDA initialises in that process, which is why even one worker runs as a child.

Under Slurm (`sweeps slurm --gpus-per-task`), CUDA_VISIBLE_DEVICES may be numbered from 0 within
the job (a site that constrains devices with cgroups renumbers them), while $SLURM_STEP_GPUS or
$SLURM_JOB_GPUS hold the machine's numbers of the same GPUs, in the same order: the index a trial
records (`machine_gpu`), and each worker's $SWEEPS_GPU under `--gpus all`, is the machine's.

Everything here is pure (the environment and the device count are arguments), except
`cuda_device_count`, so the parsing and the assignment are tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sweeps.errors import ConfigError, GpuError

GPUS_ENV = "SWEEPS_GPUS"  # --gpus when the flag is absent
GPU_ENV = "SWEEPS_GPU"  # set on each worker: its GPU's index on the machine (nvidia-smi's numbering)
SLURM_GPU_ENVS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")  # the machine's indexes of the GPUs Slurm gave
DEVICES_WITH_GPUS = ("auto", "cuda", "cuda:0")  # with --gpus a worker's only device is cuda:0


@dataclass(frozen=True)
class GpuAssignment:
    """Worker `worker` (its --worker-index) runs on the machine's GPU `gpu`; `machine`: its
    machine number when this process's CUDA_VISIBLE_DEVICES numbers it otherwise (under Slurm)."""

    worker: int
    gpu: int
    machine: int | None = None

    @property
    def number(self) -> int:
        """The GPU's number on the machine (nvidia-smi's)."""
        return self.gpu if self.machine is None else self.machine

    def env(self) -> dict[str, str]:
        """The worker's own variables: only its GPU visible, numbered as nvidia-smi numbers it."""
        return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(self.gpu), GPU_ENV: str(self.number)}

    def __str__(self) -> str:
        return f"worker {self.worker} -> GPU {self.number}"


def visible_indexes(env: Mapping[str, str]) -> list[int] | None:
    """The machine indexes $CUDA_VISIBLE_DEVICES lists, or None when it is unset or names GPUs
    otherwise (UUIDs, MIG slices): then CUDA's own numbering is all we know."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        return None


def slurm_gpus(env: Mapping[str, str]) -> list[int] | None:
    """The machine's indexes of the GPUs Slurm gave this job step (or job), in its order; None
    outside Slurm, without GPUs, or when Slurm names them otherwise."""
    for name in SLURM_GPU_ENVS:
        value = env.get(name, "").strip()
        if value:
            try:
                return [int(part) for part in value.split(",") if part.strip()]
            except ValueError:
                return None
    return None


def machine_numbers(visible: list[int], env: Mapping[str, str]) -> list[int] | None:
    """The machine's numbers of the GPUs that $CUDA_VISIBLE_DEVICES lists as `visible`, when
    Slurm says them and they differ (numbered within the job); None when they are the same."""
    given = slurm_gpus(env)
    listed = visible_indexes(env)
    if given is None or listed is None or len(given) != len(listed) or given == listed:
        return None
    return [given[listed.index(v)] if v in listed else v for v in visible]


def parse_gpus(spec: str, cuda_count: int, env: Mapping[str, str]) -> list[int]:
    """'all' or '0,2,3' -> machine GPU indexes, checked against what this machine shows.

    `cuda_count` is torch.cuda.device_count() in this process (0 without CUDA: then a list is
    taken as given, for a dry run, and 'all' has nothing to enumerate). Under a
    $CUDA_VISIBLE_DEVICES of indexes, 'all' means those, and a list is not range-checked (the
    machine may have more GPUs than this process sees; a worker given a missing one fails).
    """
    text = spec.strip()
    if text == "all":
        if cuda_count < 1:
            raise GpuError("--gpus all: no CUDA device is visible, so there is nothing to enumerate; "
                           "check the driver with nvidia-smi and that torch is a CUDA build, or name the GPUs")
        visible = visible_indexes(env)
        return visible[:cuda_count] if visible else list(range(cuda_count))
    if not text:
        raise GpuError("--gpus is empty: give 'all' or GPU indexes as nvidia-smi numbers them, e.g. 0,2,3")
    gpus: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()):  # also rejects '-1' and ''
            raise GpuError(f"--gpus {spec}: {part!r} is not a GPU index; give 'all' or indexes >= 0, e.g. 0,2,3")
        if int(part) in gpus:
            raise GpuError(f"--gpus {spec}: GPU {int(part)} is listed twice; use --trials-per-gpu for "
                           "several workers on one GPU")
        gpus.append(int(part))
    if cuda_count and visible_indexes(env) is None:
        missing = [g for g in gpus if g >= cuda_count]
        if missing:
            raise GpuError(f"--gpus {spec}: this machine shows {cuda_count} GPU(s), 0 to {cuda_count - 1} "
                           f"(nvidia-smi); no GPU {missing[0]}")
    return gpus


def assign(gpus: list[int], trials_per_gpu: int = 1, workers: int | None = None,
           first_index: int = 0, machine: list[int] | None = None) -> list[GpuAssignment]:
    """`trials_per_gpu` workers on each GPU, round-robin (worker i on gpus[i % len(gpus)]), so
    the first trials spread over every GPU. An explicit `workers` must be GPUs x trials_per_gpu:
    any other count would leave some GPU with fewer workers than asked for, silently. `machine`:
    the machine's numbers of `gpus`, when they differ (`machine_numbers`)."""
    if trials_per_gpu < 1:
        raise GpuError(f"--trials-per-gpu must be >= 1 (got {trials_per_gpu})")
    total = len(gpus) * trials_per_gpu
    if workers is not None and workers != total:
        raise GpuError(f"--workers {workers} does not match {len(gpus)} GPU(s) x --trials-per-gpu {trials_per_gpu} "
                       f"= {total}; leave --workers out with --gpus, it defaults to that product")
    return [GpuAssignment(first_index + i, gpus[i % len(gpus)], machine[i % len(gpus)] if machine else None)
            for i in range(total)]


def check_device(device: str) -> None:
    """With --gpus a worker sees one GPU, as cuda:0; a study file that asks for another device
    (the CPU, cuda:1) would make every worker ignore its GPU or fail, so say so up front."""
    if device not in DEVICES_WITH_GPUS:
        raise ConfigError("objective.device", f"is {device!r}, but --gpus runs each worker on its own GPU "
                                              "(seen as cuda:0); set it to auto or cuda")


def machine_gpu(cuda_index: int, env: Mapping[str, str]) -> int | None:
    """The machine's number (nvidia-smi's) of the GPU this process calls `cuda:<cuda_index>`:
    $SWEEPS_GPU when a --gpus parent set it, else through $CUDA_VISIBLE_DEVICES, else the CUDA
    index itself. None when the visible devices are named otherwise (UUIDs) and cannot be mapped."""
    given = env.get(GPU_ENV, "").strip()
    if given.isascii() and given.isdigit():
        return int(given)
    if "CUDA_VISIBLE_DEVICES" not in env:
        return cuda_index
    visible = visible_indexes(env)
    if visible is None or cuda_index >= len(visible):
        return None
    return (machine_numbers([visible[cuda_index]], env) or [visible[cuda_index]])[0]


def cuda_device_count() -> int:
    """GPUs this process can see (0 without a CUDA build or driver); creates no CUDA context."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_gpus(spec: str | None, trials_per_gpu: int | None, workers: int | None, first_index: int | None,
              cuda_count: Callable[[], int], env: Mapping[str, str],
              dry_run: bool = False) -> list[GpuAssignment] | None:
    """The CLI's --gpus (or $SWEEPS_GPUS; empty counts as unset) as one assignment per worker, or
    None without it (then CUDA is not even asked: `cuda_count` is called only for --gpus). A dry
    run takes a list of indexes without CUDA (it only prints the plan); a real run without CUDA
    is refused, as no worker could use its GPU."""
    if spec is None:
        spec = env.get(GPUS_ENV) or None
    if spec is None:
        if trials_per_gpu is not None:
            raise GpuError(f"--trials-per-gpu needs --gpus (or ${GPUS_ENV})")
        return None
    count = cuda_count()
    gpus = parse_gpus(spec, count, env)
    if not count and not dry_run:
        raise GpuError(f"--gpus {spec}: no CUDA device is visible (torch.cuda.is_available() is False); check the "
                       "driver with nvidia-smi and that torch is a CUDA build, or run without --gpus")
    return assign(gpus, 1 if trials_per_gpu is None else trials_per_gpu, workers, first_index or 0,
                  machine_numbers(gpus, env))
