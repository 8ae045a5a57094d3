"""Share of a sweep's wall time spent outside training and evaluation: plain Optuna vs the service.

(a) plain: the objective people write by hand: load the digits in the objective, a DataLoader,
    an MLP, `trial.report` every epoch to an SQLite store, TPE + MedianPruner.
(b) service: `sweeps.runner.run_sweep` on the same task and budget, its own SQLite store.

Training time counts everything inside the epoch loop (DataLoader iteration included for the
plain loop); evaluation counts the validation passes. Everything else (data loading, model
construction, sampler, storage writes, study bookkeeping) is overhead. Both run in this process,
one after the other, with the same number of trials and examples per trial.

    python benchmarks/overhead.py [--trials 40] [--examples 60000]   # examples/digits.yaml's sweep

Last line: `overhead_share_service=<x> overhead_share_plain=<y>`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sweeps.config import parse_config
from sweeps.runner import run_sweep, target_of

BATCH_SIZES = [16, 32, 64, 128, 256, 512]


def plain_sweep(storage: str, n_trials: int, examples: int, seed: int) -> tuple[float, float]:
    """Returns (wall seconds, seconds inside training and evaluation)."""
    inside = 0.0

    def objective(trial: optuna.Trial) -> float:
        nonlocal inside
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        batch_size = trial.suggest_categorical("batch_size", BATCH_SIZES)
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        data = load_digits()
        x_train, x_val, y_train, y_val = train_test_split(
            data.data.astype(np.float32), data.target, test_size=0.2, random_state=0)
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
        loader = DataLoader(TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
                            batch_size=batch_size, shuffle=True)
        x_val, y_val = torch.from_numpy(x_val), torch.from_numpy(y_val)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        epochs = max(1, round(examples / len(x_train)))
        best = 0.0
        for epoch in range(epochs):
            started = time.perf_counter()
            model.train()
            for xb, yb in loader:
                loss = nn.functional.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
            inside += time.perf_counter() - started
            best = max(best, accuracy)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    study = optuna.create_study(storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner())
    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    return time.perf_counter() - started, inside


def service_sweep(folder: Path, n_trials: int, examples: int, seed: int) -> tuple[float, float]:
    config = parse_config({
        "study": {"name": "overhead", "storage": "sqlite:///service.db", "metric": "val_accuracy",
                  "n_trials": n_trials, "seed": seed},
        "objective": {"task": "digits_mlp", "optimizer": "sgd"},
        "budget": {"unit": "examples", "per_trial": examples, "eval_every": 1438},  # about one epoch
        "search": {"batch_size": BATCH_SIZES, "base_lr": {"low": 1e-3, "high": 1.0, "log": True},
                   "coupling": ["none", "linear", "sqrt"], "reference_batch_size": 64},
    }, folder)
    started = time.perf_counter()
    study = run_sweep(config, target_of(config), show_progress=False)
    wall = time.perf_counter() - started
    inside = sum(t.user_attrs.get("train_seconds", 0) + t.user_attrs.get("eval_seconds", 0) for t in study.trials)
    return wall, inside


def warm_up_imports() -> None:
    """One-time import costs (scikit-learn, torch's optimizer machinery) are no one's per-trial overhead."""
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--examples", type=int, default=60000, help="training examples per trial")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(logging.WARNING)
    warm_up_imports()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        plain_wall, plain_inside = plain_sweep(f"sqlite:///{folder}/plain.db", args.trials, args.examples, args.seed)
        service_wall, service_inside = service_sweep(folder, args.trials, args.examples, args.seed)
    rows = [("plain Optuna", plain_wall, plain_inside), ("service", service_wall, service_inside)]
    print(f"{args.trials} trials of the digits MLP, {args.examples} training examples each")
    print(f"{'':<14}{'wall s':>8}{'train+eval s':>14}{'outside s':>11}{'share':>8}")
    for name, wall, inside in rows:
        print(f"{name:<14}{wall:>8.2f}{inside:>14.2f}{wall - inside:>11.2f}{(wall - inside) / wall:>8.3f}")
    share = {name: (wall - inside) / wall for name, wall, inside in rows}
    print(f"overhead_share_service={share['service']:.3f} overhead_share_plain={share['plain Optuna']:.3f}")


if __name__ == "__main__":
    main()
