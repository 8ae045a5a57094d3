"""Trials per hour with several trials fused on one device (objectives/training/fused/) against
the best unfused setting on the same machine, the same trials.

Every setting trains the same `--trials` trials (seed and LR differ; SGD with momentum, cosine
schedule with warmup, an `updates` budget with evaluations), building each trial's task as a
trial builds it:
- `serial`: one trial at a time in this process (torch's threads: all the cores);
- `workers2`: two processes, each with one thread and half the trials (`--workers 2` on 2 cores);
- `fused K`: groups of K trials, each group one `FusedTrainer`, in two processes of one thread and
  half the trials each, as `--workers 2` would fuse them (`--fused-workers 1`: in this process).
Each line prints trials per hour; a fused line also `fused_vs_best_unfused`, its trials per hour
over the better of serial and workers2. Every process trains one throwaway trial on the timed path
before its clock starts, and a spawned setting's clock stops when its processes have trained, before
they exit: a worker's first-use costs and exit are paid once per sweep, not per trial. The settings
of one task and batch run one after the other (`--repeats` alternates them and takes the median of
each).

    python benchmarks/fused.py                     # digits and teacher MLPs, batch 32 and 128
    python benchmarks/fused.py --resnet            # and the synthetic-images ResNet at batch 64
    python benchmarks/fused.py --tasks --resnet    # the ResNet alone
    python benchmarks/fused.py --autograd --ks 4 8 16   # and the update without autograd over the same through it
    python benchmarks/fused.py --instruments --ks 8     # and the fused trials with each instrument over without
    python benchmarks/fused.py --products --ks 8        # and what share of a trial alone its products are
    python benchmarks/fused.py --device cuda --resnet   # on a GPU (benchmarks/gpu_checks.sh)

On a GPU (`--device cuda`) the unfused settings are `serial` and `--trials-per-gpu N` (`procsN`: N
processes sharing the GPU, each with its share of the trials), and the fused groups train in one
process unless `--fused-workers 2`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch

from objectives.task import Task, TrialSettings
from objectives.tasks.digits import digits_mlp
from objectives.tasks.synthetic_images import resnet_synthetic
from objectives.tasks.teacher import teacher_mlp
from objectives.training.budget import Budget, plan_trial
from objectives.training.fused import FusedMember, FusedTrainer, MemberOptimizer
from objectives.training.loop import Trainer, TrainResult
from objectives.training.optimizers import OPTIMIZERS
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule

DEVICE_VARIABLE = "SWEEPS_FUSED_BENCH_DEVICE"  # set by --device; spawned workers read it too
TASKS = {"digits_mlp": (digits_mlp, {}), "teacher_mnist": (teacher_mlp, {"dim": 784, "n_train": 60000}),
         "resnet_synthetic": (resnet_synthetic, {"n_train": 2048, "n_val": 256})}
OPTIONS = TrainerOptions(maximize=True)
OPTIMIZER = MemberOptimizer("sgd", momentum=0.9)


def device() -> torch.device:
    return torch.device(os.environ.get(DEVICE_VARIABLE, "cpu"))


def build(task: str, seed: int, batch_size: int) -> Task:
    """As `SweepObjective.make_task` builds a trial's task: the model under the trial's seed."""
    factory, options = TASKS[task]
    torch.random.default_generator.manual_seed(seed)
    return factory(TrialSettings(batch_size, 0.05, seed, device(), options=dict(options))).to(device())


def trial_lr(i: int) -> float:
    return 0.01 * 10 ** ((i % 8) / 7)  # 0.01 .. 0.1, log-spaced


def member(task: str, i: int, batch_size: int, budget: Budget) -> FusedMember:
    built = build(task, 1000 + i, batch_size)
    plan = plan_trial(budget, built.n_train, batch_size)
    return FusedMember(built, OPTIMIZER, Schedule.build(trial_lr(i), plan.planned_updates, 0.1, "cosine", 0.0),
                       plan, 1000 + i)


def train_alone(task: str, trials: list[int], batch_size: int, budget: Budget) -> list[TrainResult]:
    results = []
    for i in trials:
        m = member(task, i, batch_size, budget)
        optimizer = OPTIMIZERS["sgd"](m.task.model.parameters(), lr=m.schedule.peak_lr, momentum=OPTIMIZER.momentum)
        results.append(Trainer(m.task, optimizer, m.schedule, m.plan, budget, OPTIONS, seed=m.seed).train())
    return results


def train_fused(task: str, trials: list[int], batch_size: int, budget: Budget, k: int, autograd: bool = False,
                options: TrainerOptions = OPTIONS) -> None:
    for first in range(0, len(trials), k):
        members = [member(task, i, batch_size, budget) for i in trials[first : first + k]]
        trainer = FusedTrainer(members, budget, options)
        trainer.direct = trainer.direct and not autograd  # --autograd: the fused update through autograd
        trainer.train()


def one_thread_medians(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """In this process, on one thread: each run's median seconds, the runs alternating `repeats` times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spent: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                spent[name].append(time.perf_counter() - started)
        return {name: statistics.median(times) for name, times in spent.items()}
    finally:
        torch.set_num_threads(threads)


def direct_vs_autograd(task: str, batch_size: int, ks: list[int], n: int, budget: Budget, repeats: int) -> None:
    """In this process (one thread): the fused trials with the update without autograd, over the
    same through autograd (`objectives/training/fused/direct.py`), alternating, median of each."""
    for k in ks:
        if k == 1:
            continue  # a group of one runs its solo kernels either way
        train_fused(task, [10_000], batch_size, budget, k)  # warm
        trials = list(range(n))
        spent = one_thread_medians({path: partial(train_fused, task, trials, batch_size, budget, k, path == "autograd")
                                    for path in ("autograd", "direct")}, repeats)
        print(f"task={task} batch={batch_size} K={k} one thread: trials_per_hour "
              f"autograd={per_hour(n, spent['autograd']):.0f} direct={per_hour(n, spent['direct']):.0f} "
              f"direct_vs_autograd={spent['autograd'] / spent['direct']:.2f}", flush=True)


def seconds_per_call(run: Callable[[], object], calls: int = 200) -> float:
    """Mean seconds of `run()` over `calls` calls, after ten to warm it."""
    for _ in range(10):
        run()
    started = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - started) / calls


def product_share(task: str, batch_size: int, ks: list[int], n: int, budget: Budget, repeats: int) -> None:
    """In this process (one thread): ms per trial alone and as a member of a fused group of each K, and
    the ms a trial alone spends in its linear layers' matrix products, each product timed at its own
    shapes (an update's forward, weight gradient and input gradient, but the first layer's; each
    evaluation's forward over the validation set). Fusion can take away the rest of a trial, not its
    products: alone / products bounds what fusing gains on this machine, whatever K."""
    (result,) = train_alone(task, [0], batch_size, budget)
    built = member(task, 0, batch_size, budget)
    n_val = len(built.task.val[0])
    layers = [m for m in built.task.model.modules() if isinstance(m, torch.nn.Linear)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        per_update = per_evaluation = 0.0
        for i, layer in enumerate(layers):
            x, w = torch.randn(batch_size, layer.in_features), torch.randn(layer.in_features, layer.out_features)
            grad = torch.randn(batch_size, layer.out_features)
            per_update += seconds_per_call(partial(torch.mm, x, w)) + seconds_per_call(partial(torch.mm, grad.t(), x))
            if i > 0:
                per_update += seconds_per_call(partial(torch.mm, grad, w.t()))
            val = torch.randn(n_val, layer.in_features)
            per_evaluation += seconds_per_call(partial(torch.mm, val, w), calls=20)
    finally:
        torch.set_num_threads(threads)
    products = result.updates * per_update + len(result.history) * per_evaluation
    trials = list(range(n))
    spent = one_thread_medians({"alone": partial(train_alone, task, trials, batch_size, budget),
                                **{f"K={k}": partial(train_fused, task, trials, batch_size, budget, k) for k in ks}},
                               repeats)
    alone = spent["alone"] / n
    print(f"task={task} batch={batch_size} one thread: ms per trial alone={alone * 1e3:.1f} "
          f"products={products * 1e3:.1f} ({result.updates} updates, {len(result.history)} evaluations of "
          f"{n_val}) share={products / alone:.2f} bound_on_fused_gain={alone / products:.2f}", flush=True)
    for k in ks:
        fused = spent[f"K={k}"] / n
        print(f"task={task} batch={batch_size} K={k} one thread: ms per trial fused={fused * 1e3:.1f} "
              f"fused_vs_alone={alone / fused:.2f}", flush=True)


INSTRUMENTS = {"noise_scale": replace(OPTIONS, measure_noise=True), "value_se": replace(OPTIONS, measure_value_se=True)}


def instrument_cost(task: str, batch_size: int, ks: list[int], n: int, budget: Budget, repeats: int) -> None:
    """In this process (one thread): the fused trials with each instrument on, and without,
    alternating; each instrument's trials per hour over none's (median of each)."""
    for k in ks:
        train_fused(task, [10_000], batch_size, budget, k)  # warm
        trials = list(range(n))
        spent = one_thread_medians({name: partial(train_fused, task, trials, batch_size, budget, k, options=options)
                                    for name, options in {"none": OPTIONS, **INSTRUMENTS}.items()}, repeats)
        print(f"task={task} batch={batch_size} K={k} one thread: trials_per_hour none={per_hour(n, spent['none']):.0f} "
              + " ".join(f"{name}={per_hour(n, spent[name]):.0f} {name}_vs_none={spent['none'] / spent[name]:.2f}"
                         for name in INSTRUMENTS), flush=True)


def train(task: str, trials: list[int], batch_size: int, budget: Budget, k: int) -> None:
    """The trials one at a time (k = 0) or in fused groups of k."""
    if k == 0:
        train_alone(task, trials, batch_size, budget)
    else:
        train_fused(task, trials, batch_size, budget, k)
    if device().type == "cuda":
        torch.cuda.synchronize()  # the queued kernels are part of the time


def warm_up(task: str, batch_size: int, budget: Budget, k: int) -> None:
    """Before any clock: the data set, and one throwaway trial on the path to be timed, which pays
    the path's first-use costs, once per process."""
    build(task, 0, batch_size)
    train(task, [10_000], batch_size, budget, min(k, 1))


def worker(task: str, trials: list[int], batch_size: int, budget: Budget, k: int, ready, done) -> None:
    torch.set_num_threads(1)
    warm_up(task, batch_size, budget, k)
    ready.wait()
    train(task, trials, batch_size, budget, k)
    done.wait()  # the clock stops here: the process's exit (0.3 to 0.7 s with torch loaded) is a one-off


def seconds(task: str, n: int, batch_size: int, budget: Budget, k: int, workers: int) -> float:
    """Wall time of the n trials: in this process (workers = 1), or in `workers` spawned processes
    of one thread each, timed from when all are ready to when all have trained their trials (a
    process's start and exit are one-off costs of a worker, left out as for this process)."""
    if workers == 1:
        started = time.perf_counter()
        train(task, list(range(n)), batch_size, budget, k)
        return time.perf_counter() - started
    context = multiprocessing.get_context("spawn")
    ready, done = context.Barrier(workers + 1), context.Barrier(workers + 1)
    processes = [context.Process(target=worker, args=(task, list(range(w, n, workers)), batch_size, budget, k,
                                                      ready, done)) for w in range(workers)]
    for process in processes:
        process.start()
    ready.wait()
    started = time.perf_counter()
    done.wait()
    spent = time.perf_counter() - started
    for process in processes:
        process.join()
    return spent


def per_hour(n: int, seconds: float) -> float:
    return n * 3600 / seconds


def unfused_settings(trials_per_gpu: list[int]) -> dict[str, int]:
    """The unfused settings and their processes: on the CPU one process of all the cores' threads
    and `--workers 2`; on a GPU one process and each `--trials-per-gpu N`."""
    if device().type == "cuda":
        return {"serial": 1, **{f"procs{n}": n for n in trials_per_gpu}}
    return {"serial": 1, "workers2": 2}


def bench(task: str, batch_size: int, ks: list[int], n: int, budget: Budget, repeats: int,
          fused_workers: int, trials_per_gpu: list[int]) -> None:
    for k in (0, 1):  # this process's settings: both paths warmed before any clock
        warm_up(task, batch_size, budget, k)
    unfused = unfused_settings(trials_per_gpu)
    settings = {**{name: (lambda w=w: seconds(task, n, batch_size, budget, 0, w)) for name, w in unfused.items()},
                **{f"fused{k}": (lambda k=k: seconds(task, n, batch_size, budget, k, fused_workers)) for k in ks}}
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(repeats):
        for name, run in settings.items():
            times[name].append(run())
    rate = {name: per_hour(n, statistics.median(spent)) for name, spent in times.items()}
    best = max(unfused, key=lambda name: rate[name])
    head = f"task={task} batch={batch_size} trials={n} updates={int(budget.per_trial)}"
    print(f"{head} unfused " + " ".join(f"{name}={rate[name]:.0f}/h" for name in unfused) + f" best={best}",
          flush=True)
    for k in ks:
        print(f"{head} K={k} fused_workers={fused_workers} trials_per_hour={rate[f'fused{k}']:.0f} "
              f"fused_vs_best_unfused={rate[f'fused{k}'] / rate[best]:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=["digits_mlp", "teacher_mnist"], choices=sorted(TASKS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--trials", type=int, default=32, help="trials per setting (each fused worker gets half)")
    parser.add_argument("--updates", type=int, default=90, help="updates per trial")
    parser.add_argument("--fused-workers", type=int, choices=[1, 2],
                        help="fused groups in this process (1) or in two one-thread processes (2); "
                             "default 2 on the CPU, 1 on a GPU")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU)")
    parser.add_argument("--trials-per-gpu", nargs="+", type=int, default=[2, 4, 8],
                        help="on a GPU: the unfused settings of N processes sharing it")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--autograd", action="store_true",
                        help="also, in this process, the fused update without autograd over the same through it")
    parser.add_argument("--instruments", action="store_true",
                        help="also, in this process, the fused trials with measure.noise_scale and with "
                             "measure.value_se over the same without")
    parser.add_argument("--products", action="store_true",
                        help="also, in this process, a trial alone and fused on one thread, and how much of a trial "
                             "alone is its linear layers' products (what bounds the fused gain)")
    parser.add_argument("--resnet", action="store_true",
                        help="also the ResNet at batch 64 (--resnet-trials trials of --resnet-updates updates)")
    parser.add_argument("--resnet-trials", type=int, default=4)
    parser.add_argument("--resnet-updates", type=int, default=8)
    args = parser.parse_args()
    os.environ[DEVICE_VARIABLE] = args.device
    if args.fused_workers is None:
        args.fused_workers = 1 if device().type == "cuda" else 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device()}", flush=True)
    budget = Budget("updates", args.updates, args.updates // 3)
    for task in args.tasks:
        for batch_size in args.batch_sizes:
            bench(task, batch_size, args.ks, args.trials, budget, args.repeats, args.fused_workers,
                  args.trials_per_gpu)
            if args.autograd:
                direct_vs_autograd(task, batch_size, args.ks, args.trials, budget, args.repeats)
            if args.instruments:
                instrument_cost(task, batch_size, args.ks, args.trials, budget, args.repeats)
            if args.products:
                product_share(task, batch_size, args.ks, args.trials, budget, args.repeats)
    if args.resnet:
        ks = [k for k in args.ks if k <= args.resnet_trials // args.fused_workers]
        bench("resnet_synthetic", 64, ks, args.resnet_trials,
              Budget("updates", args.resnet_updates, args.resnet_updates // 2), args.repeats, args.fused_workers,
              args.trials_per_gpu)


if __name__ == "__main__":
    main()
