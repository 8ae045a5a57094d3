"""Examples/second of the service's trainer against a minimal hand-written loop and a DataLoader loop.

Same model, data, batch size and number of updates for each; runs alternate and the median of
`--repeats` is reported. Then the Dataset path: the trainer fed a map-style Dataset (the same
rows) through its DataLoader, against a minimal hand-written DataLoader loop on the same Dataset
and model, with the same loader settings (`--loader-workers`, default: the study file's default
rule). The trainer fits torch's threads beside the loader's processes (objectives/training/cores.py);
the minimal loop keeps torch's default threads, as a hand-written loop would.
Last line: `trainer_vs_minimal=<c/a> trainer_vs_dataloader=<c/b> dataset_vs_minimal=<e/d>`.

The cost of `measure: {noise_scale: true}` (objectives/training/noise_scale.py) comes before it: the
trainer measuring against the same trainer not measuring, alternating in one process, for the batch
not split and for the batch split in `--noise-parts` micro-batches, each printed as the measuring
run's throughput over the baseline's (`noise_scale_unsplit=<ratio> noise_scale_split=<ratio>`;
1.00 is free, 0.95 a 5% cost). `--noise-only` runs just that part.

Then the cost of the live progress display: the trainer writing its shared record
(objectives/training/live.py) each update, read once a second by a forked process as the
bookkeeper reads it, against the same trainer without it (`live_display=<ratio>`; `--live-only`).

    python benchmarks/trainer.py                                  # digits MLP on the CPU
    python benchmarks/trainer.py --task resnet_synthetic --batch-size 256 --updates 200  # a GPU
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from objectives.registry import resolve_task
from objectives.task import Task, TrialSettings
from objectives.training.budget import Budget, plan_trial
from objectives.training.cores import default_loader_workers
from objectives.training.data import LoaderOptions
from objectives.training.live import LiveTrial
from objectives.training.loop import Trainer
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule


def make_task(name: str, device: torch.device, batch_size: int, lr: float) -> Task:
    torch.manual_seed(0)
    task = resolve_task(name)(TrialSettings(batch_size, lr, 0, device))
    return task.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minimal_loop(task: Task, batch_size: int, updates: int, lr: float, device) -> float:
    """(a) What a careful person writes: tensors on the device, index permutation per epoch."""
    x, y = task.train
    model, n = task.model, len(x)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    per_epoch = -(-n // batch_size)
    sync(device)
    started = time.perf_counter()
    for u in range(updates):
        slot = u % per_epoch
        if slot == 0:
            perm = torch.randperm(n, device=device)
        idx = perm[slot * batch_size : (slot + 1) * batch_size]
        loss = task.loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - started


def dataloader_loop(task: Task, batch_size: int, updates: int, lr: float, device) -> float:
    """(b) The textbook loop: a DataLoader over CPU tensors, each batch copied to the device."""
    x, y = (t.cpu() for t in task.train)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    return loader_loop(task.model, task.loss, loader, updates, lr, device)


def loader_loop(model, loss_fn, loader: DataLoader, updates: int, lr: float, device,
                non_blocking: bool = False) -> float:
    """The hand-written loop over a DataLoader that (b) and (d) share: copy, forward, backward, step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    done = 0
    sync(device)
    started = time.perf_counter()
    while done < updates:
        for xb, yb in loader:
            loss = loss_fn(model(xb.to(device, non_blocking=non_blocking)), yb.to(device, non_blocking=non_blocking))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == updates:
                break
    sync(device)
    return time.perf_counter() - started


def service_trainer(task: Task, batch_size: int, updates: int, lr: float, device,
                    loader: LoaderOptions | None = None, *, measure_noise: bool = False,
                    max_micro_batch: int | None = None, live: LiveTrial | None = None) -> float:
    """(c) The service's Trainer, with its LR schedule, budget grid and divergence checks."""
    opt = torch.optim.SGD(task.model.parameters(), lr=lr, momentum=0.9)
    budget = Budget("updates", updates, updates)  # one evaluation, at the end (not timed)
    plan = plan_trial(budget, task.n_train, batch_size)
    schedule = Schedule.build(lr, plan.planned_updates, 0.05, "cosine", 0.0)
    options = TrainerOptions(maximize=True, loader=loader or LoaderOptions(), measure_noise=measure_noise,
                             max_micro_batch=max_micro_batch)
    trainer = Trainer(task, opt, schedule, plan, budget, options, seed=0, live=live)
    return trainer.train().train_seconds


class Rows(Dataset):
    """A map-style Dataset over host tensors: one example per `__getitem__`, as a file-backed one."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x.cpu(), y.cpu()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def as_dataset_task(task: Task) -> Task:
    task.train, task.val = Rows(*task.train), Rows(*task.val)
    return task


def minimal_dataset_loop(task: Task, batch_size: int, updates: int, lr: float, device,
                         loader: LoaderOptions) -> float:
    """(d) A minimal hand-written DataLoader loop on the Dataset: the same loader settings."""
    workers = loader.resolved_workers()
    extra = {"persistent_workers": True, "prefetch_factor": loader.prefetch} if workers else {}
    pin = loader.pin_memory and device.type == "cuda"
    data = DataLoader(task.train, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=pin, **extra)
    return loader_loop(task.model, task.loss, data, updates, lr, device, non_blocking=pin)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="digits_mlp")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dataset-updates", type=int, default=1000, help="updates of each Dataset-path run")
    parser.add_argument("--loader-workers", type=int, default=default_loader_workers(),
                        help="DataLoader workers of both Dataset-path loops (default: the study file's rule)")
    parser.add_argument("--noise-parts", type=int, default=2, help="micro-batches of the split noise-scale runs")
    parser.add_argument("--noise-only", action="store_true", help="only the cost of measuring the noise scale")
    parser.add_argument("--live-only", action="store_true", help="only the cost of the progress display's record")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if not args.live_only:
        noise_scale_ratios(args, device)
    if args.noise_only:
        return
    live_display_ratio(args, device)
    if args.live_only:
        return
    loops = {"minimal": minimal_loop, "dataloader": dataloader_loop, "trainer": service_trainer}
    speeds: dict[str, list[float]] = {name: [] for name in loops}
    examples = args.updates * args.batch_size
    for loop in loops.values():  # warm-up: kernels, allocator, thread pools
        loop(make_task(args.task, device, args.batch_size, args.lr), args.batch_size, 20, args.lr, device)
    for _ in range(args.repeats):
        for name, loop in loops.items():
            task = make_task(args.task, device, args.batch_size, args.lr)
            seconds = loop(task, args.batch_size, args.updates, args.lr, device)
            speeds[name].append(examples / seconds)
    median = {name: statistics.median(v) for name, v in speeds.items()}
    print(f"task {args.task}, device {device}, batch {args.batch_size}, {args.updates} updates, "
          f"median of {args.repeats}")
    for name, value in median.items():
        spread = f"{min(speeds[name]):.0f}-{max(speeds[name]):.0f}"
        print(f"  {name:<10} {value:>12.0f} examples/s  (range {spread})")
    dataset = dataset_speeds(args, device)
    print(f"Dataset path ({args.loader_workers} loader workers), {args.dataset_updates} updates, "
          f"median of {args.repeats}")
    for name, values in dataset.items():
        print(f"  {name:<16} {statistics.median(values):>12.0f} examples/s  "
              f"(range {min(values):.0f}-{max(values):.0f})")
    dataset_ratio = statistics.median(dataset["dataset_trainer"]) / statistics.median(dataset["dataset_minimal"])
    print(f"trainer_vs_minimal={median['trainer'] / median['minimal']:.3f} "
          f"trainer_vs_dataloader={median['trainer'] / median['dataloader']:.3f} "
          f"dataset_vs_minimal={dataset_ratio:.3f}")


def noise_scale_ratios(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Throughput measuring the noise scale over throughput not measuring it, alternating runs of
    the same trainer on fresh tasks: for the batch not split (one update in 64 measured, as two
    halves) and for the batch split in `--noise-parts` micro-batches (one in 16)."""
    split = -(-args.batch_size // args.noise_parts)
    cases = {"unsplit": None, "split": split}
    ratios: dict[str, float] = {}
    print(f"Noise scale cost (measure: {{noise_scale: true}}), {args.updates} updates, median of {args.repeats}")
    for case, micro in cases.items():
        runs = {"baseline": False, "measured": True}
        speeds: dict[str, list[float]] = {name: [] for name in runs}
        for measure in runs.values():  # warm-up
            service_trainer(make_task(args.task, device, args.batch_size, args.lr), args.batch_size, 20, args.lr,
                            device, measure_noise=measure, max_micro_batch=micro)
        for _ in range(args.repeats):
            for name, measure in runs.items():
                task = make_task(args.task, device, args.batch_size, args.lr)
                seconds = service_trainer(task, args.batch_size, args.updates, args.lr, device,
                                          measure_noise=measure, max_micro_batch=micro)
                speeds[name].append(args.updates * args.batch_size / seconds)
        median = {name: statistics.median(v) for name, v in speeds.items()}
        ratios[case] = median["measured"] / median["baseline"]
        label = f"batch {args.batch_size}" + ("" if micro is None else f" as {args.noise_parts} x {micro}")
        print(f"  {case:<8} {label:<20} baseline {median['baseline']:>10.0f}  measured {median['measured']:>10.0f} "
              f"examples/s  ratio {ratios[case]:.3f}")
    print(" ".join(f"noise_scale_{name}={ratio:.3f}" for name, ratio in ratios.items()))
    return ratios


def live_display_ratio(args: argparse.Namespace, device: torch.device) -> float:
    """Throughput with the progress display's shared record written (and read once a second, from
    a forked process, as the bookkeeper draws it) over throughput without it, alternating runs."""
    speeds: dict[str, list[float]] = {"baseline": [], "live": []}
    record = LiveTrial()
    reader = multiprocessing.get_context("fork").Process(target=read_every_second, args=(record,), daemon=True)
    reader.start()
    try:
        for _ in range(args.repeats):
            for name in speeds:
                task = make_task(args.task, device, args.batch_size, args.lr)
                seconds = service_trainer(task, args.batch_size, args.updates, args.lr, device,
                                          live=record if name == "live" else None)
                speeds[name].append(args.updates * args.batch_size / seconds)
    finally:
        reader.terminate()
    median = {name: statistics.median(v) for name, v in speeds.items()}
    ratio = median["live"] / median["baseline"]
    print(f"Progress display cost, {args.updates} updates, median of {args.repeats}: baseline "
          f"{median['baseline']:.0f}, live record {median['live']:.0f} examples/s")
    print(f"live_display={ratio:.3f}")
    return ratio


def read_every_second(record: LiveTrial) -> None:
    while True:
        record.read()
        time.sleep(1.0)


def dataset_speeds(args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    """(d) and (e), alternating, each on a fresh Dataset task (same rows, same model init)."""
    loader = LoaderOptions(workers=args.loader_workers)
    loops = {
        "dataset_minimal": lambda task, n: minimal_dataset_loop(task, args.batch_size, n, args.lr, device, loader),
        "dataset_trainer": lambda task, n: service_trainer(task, args.batch_size, n, args.lr, device, loader),
    }
    speeds: dict[str, list[float]] = {name: [] for name in loops}
    for loop in loops.values():  # warm-up
        loop(as_dataset_task(make_task(args.task, device, args.batch_size, args.lr)), 20)
    for _ in range(args.repeats):
        for name, loop in loops.items():
            task = as_dataset_task(make_task(args.task, device, args.batch_size, args.lr))
            seconds = loop(task, args.dataset_updates)
            speeds[name].append(args.dataset_updates * args.batch_size / seconds)
    return speeds


if __name__ == "__main__":
    main()
