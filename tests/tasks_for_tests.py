"""Task factories for the trainer and sweep tests (`objective.task: tests.tasks_for_tests:NAME`).

Each is a real task the service trains; they are built so that what the loop did can be read back
from the numbers the study stores:

- `overshoot`: one weight trained from 0 towards 2 while the validation set rewards 1, so the
  validation metric rises, peaks near update 6 (at LR 0.05, no momentum) and then degrades;
- `lr_probe`: a loss whose gradient is exactly 1, so plain SGD moves the weight by -lr each update
  and the validation metric (the weight itself) is minus the sum of the learning rates so far;
- `regression_small`: the built-in regression task on a tiny data set;
- `crash_on_batch`, `crash_in_training`, `scripted`: failures (and Ctrl-C) on demand;
- `regression_with_peers`: the built-in regression task, whose workers of `--workers` each hold a
  trial before any of them can finish the study;
- `regression_held`: the built-in regression task, each trial holding its reservation for a while
  before it trains;
- `regression_paced`: the built-in regression task, each training batch taking a while, mostly
  asleep: a `seconds` trial that lasts without keeping a core busy;
- `regression_signalled_in_torch`: the built-in regression task whose loss, once, raises what torch
  raised when a SIGTERM landed in its own bookkeeping: its error, whose context is the signal's.

A study builds its task once outside any trial (to learn N) with no trial parameters, so the
failure factories only fail when `settings.params` is not empty: the studies that use them search
at least one value.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from objectives.task import Task, TrialSettings, negative_mse
from objectives.tasks.regression import regression
from sweeps.errors import Terminated


def mse(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((pred - targets) ** 2).mean()


def overshoot(settings: TrialSettings) -> Task:
    """y = 2x on x = +-1; validation wants y = x. The weight follows w_k = 2 - 2 (1 - 2 lr)^k."""
    n = int(settings.options.get("n_train", 64))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (n, 1), generator=gen).float() * 2 - 1
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    x_val = torch.ones(16, 1)
    return Task(model, (x, 2 * x), (x_val, x_val.clone()), mse, negative_mse)


class Offset(nn.Module):
    """Predicts its one weight for every example (float64, so sums of LRs stay exact)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(len(x), 1)


def lr_probe(settings: TrialSettings) -> Task:
    n = int(settings.options.get("n_train", 40))
    x = torch.zeros(n, 1)
    return Task(Offset(), (x, x.clone()), (x[:4], x[:4].clone()),
                lambda pred, _: pred.mean(), lambda pred, _: pred.mean())


def regression_small(settings: TrialSettings) -> Task:
    options = {"dim": 8, "n_train": 300, "n_val": 64, **settings.options}
    return regression(TrialSettings(settings.batch_size, settings.lr, settings.seed, settings.device,
                                    settings.params, options, settings.base_dir))


def crash_on_batch(settings: TrialSettings) -> Task:
    if settings.params and settings.batch_size == int(settings.options.get("crash_batch", 64)):
        raise RuntimeError(f"shard for batch {settings.batch_size} is corrupt")
    return regression_small(TrialSettings(settings.batch_size, settings.lr, settings.seed, settings.device,
                                          settings.params, {}, settings.base_dir))


class ExplodesWhenTrained(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise ValueError("the loss kernel is broken")
        return self.linear(x)


def crash_in_training(settings: TrialSettings) -> Task:
    """Builds fine; the first training step raises."""
    task = regression_small(settings)
    task.model = ExplodesWhenTrained()
    return task


def scripted(settings: TrialSettings) -> Task:
    """Counts trial builds in the file `options.counter`; build k fails when k is in `options.fail`,
    raises KeyboardInterrupt when k is `options.interrupt`, else trains `regression_small`."""
    options = dict(settings.options)
    counter = Path(options.pop("counter"))
    fail, interrupt = options.pop("fail", []), options.pop("interrupt", None)
    if settings.params:
        k = (int(counter.read_text()) if counter.exists() else 0) + 1
        counter.write_text(str(k))
        if k == interrupt:
            raise KeyboardInterrupt
        if k in fail:
            raise RuntimeError(f"build {k} failed on purpose")
    return regression_small(TrialSettings(settings.batch_size, settings.lr, settings.seed, settings.device,
                                          settings.params, options, settings.base_dir))


class RecordingSGD(torch.optim.SGD):
    """SGD that remembers the learning rate of every update it takes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lrs: list[float] = []

    def step(self, closure=None):
        self.lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


def digits_golden(settings: TrialSettings) -> Task:
    """The digits MLP with dropout (the random state a cooldown branch forks), an augment (the
    trial's augment generator), 64 tokens per example (one per pixel, for a `tokens` budget) and,
    with `options.dataset`, a Dataset fed by a DataLoader: every path the trainer takes."""
    from torch.utils.data import TensorDataset

    from objectives.task import accuracy
    from objectives.tasks.digits import digits_tensors

    x_train, y_train, x_val, y_val = digits_tensors()
    n = int(settings.options.get("n_train", len(x_train)))
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))

    def jitter(batch, generator):
        x, y = batch
        return x + 0.05 * torch.randn(x.shape, generator=generator, device=x.device), y

    train = (x_train[:n], y_train[:n])
    if settings.options.get("dataset"):
        train = TensorDataset(*train)
    return Task(model, train, (x_val, y_val), nn.functional.cross_entropy, accuracy,
                augment=jitter, tokens_per_example=64)


WAITED: list[int] = []  # this process's pid once its first trial has waited for its peers


def regression_with_peers(settings: TrialSettings) -> Task:
    """The built-in regression task (`objective.options` less `started` and `peers`). In a child of
    `--workers`, the first trial's build waits, up to 60 s, until `options.peers` children have
    reached theirs (a file each in the folder `options.started`): each worker then holds a trial
    before any can finish the study, however unevenly a loaded machine starts them (a study of a
    few tiny trials is otherwise done by whichever worker opens the store first). With
    `options.replicas` true, every process waits so, not only children of `--workers`: replicas
    started with one command line, as compose starts them."""
    settings, (started, peers) = less(settings, "started", "peers")
    settings, (replicas,) = less(settings, "replicas") if "replicas" in settings.options else (settings, [False])
    folder, peers = Path(started), int(peers)
    if settings.params and ("--as-worker" in sys.argv or replicas) and not WAITED:
        WAITED.append(os.getpid())
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 60
        while len(list(folder.iterdir())) < peers and time.monotonic() < deadline:
            time.sleep(0.05)
    return regression(settings)


def regression_held(settings: TrialSettings) -> Task:
    """The built-in regression task (`objective.options` less `hold`), each trial's build sleeping
    `options.hold` seconds: a trial is then seen running, its cost reserved, by a test that polls the
    store (a tiny trial is otherwise over between two polls, and a tiny study too)."""
    settings, (hold,) = less(settings, "hold")
    if settings.params:
        time.sleep(float(hold))
    return regression(settings)


def regression_paced(settings: TrialSettings) -> Task:
    """The built-in regression task (`objective.options` less `pace`), each training batch sleeping
    `options.pace` seconds (in its augment): a trial under a `seconds` budget trains, evaluates,
    beats and stops as any does, for its seconds, with its core mostly idle. The tests of workers,
    signals and outages start many of them at once on two cores, where busy ones took CPU from
    every other test of the suite."""
    settings, (pace,) = less(settings, "pace")

    def paced(batch, generator):
        time.sleep(float(pace))
        return batch

    return replace(regression(settings), augment=paced)


def less(settings: TrialSettings, *names: str) -> tuple[TrialSettings, list]:
    """The settings without the test's own `objective.options` (what the built-in task is given),
    and those options' values."""
    options = dict(settings.options)
    values = [options.pop(name) for name in names]
    return replace(settings, options=options), values


LOSS_CALLS: list[int] = []  # this process's calls of regression_signalled_in_torch's loss


def regression_signalled_in_torch(settings: TrialSettings) -> Task:
    """The built-in regression task (`objective.options` less `at`) whose loss, at its `options.at`-th
    call in the process, raises as torch did when a SIGTERM landed inside `vmap`'s nesting count (a
    fused group in a fresh-clone CI run): torch's RuntimeError, raised while the signal's Terminated
    was being handled. The sweep must stop as on the signal itself."""
    settings, (at,) = less(settings, "at")
    task = regression(settings)
    inner = task.loss

    def loss(outputs, targets):
        LOSS_CALLS.append(1)
        if len(LOSS_CALLS) == int(at):
            try:
                raise Terminated("signal 15")
            except Terminated:
                raise RuntimeError("!dynamicLayerStack.empty() INTERNAL ASSERT FAILED (as torch raised it)") from None
        return inner(outputs, targets)

    return replace(task, loss=loss)

