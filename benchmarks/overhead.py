"""Share of a sweep's wall time spent outside training and evaluation: plain Optuna vs the service.

Both run the digits MLP sweep of `examples/digits.yaml` in this process, one after the other, with
the same number of trials, the same per-trial cap on training examples and the same Hyperband
shape, each with its own fresh SQLite store in a temporary folder:

(a) plain: the objective people write by hand (as in Optuna's PyTorch examples): suggest batch
    size, LR and epochs, load scikit-learn's digits inside the objective, standardise, build a
    DataLoader, an MLP and SGD, train epoch by epoch, evaluate, `trial.report` every epoch and
    `trial.should_prune()`, in `optuna.create_study(storage="sqlite:///...")` with TPE and Hyperband
    (min resource = the service's evaluation interval, max = the example cap, both in epochs).
(b) service: `sweeps.loop.runner.run_sweep` on examples/digits.yaml with its store, trial count and
    (with --quick or --examples) budget overridden, progress display off (on with --progress: the
    trainer's shared-memory record, and on a terminal the bookkeeper's redraw thread; run it
    under a terminal, e.g. `script -qc "..." /dev/null`, to time the live line).

Inside = training and evaluation. For the plain loop that is each epoch's training loop as a user
writes it (DataLoader batch fetching included: it is how that loop trains) plus the validation
pass, timed with perf_counter in the objective. Outside = everything else in the sweep's wall time:
creating the study and its tables, sampling, trial and report writes, pruning decisions, data
loading, model and optimizer construction.

For the service, the trials record `train_seconds + eval_seconds`. But its bookkeeping (sampling,
pruning decisions, trial records) runs beside a trial's training (in a forked process, or on a
thread with SWEEPS_BOOKKEEPING=thread), and whatever it takes from training (a core; on a thread
also the GIL: each torch call gives it up and then waits to get it back) shows up as slower
training, i.e. would count as inside. So after the sweep every
finished trial is trained again on its own, with the same seed, parameters and stopping step and
no sweep around it (`--no-replay` skips this), and the service's inside is the
smaller of the two totals. Both rows are printed.

    python benchmarks/overhead.py [--trials 30] [--examples N] [--quick] [--no-replay] [--seed 0] [--progress]

Last line: `overhead_share_service=<x> overhead_share_plain=<y>` (fractions of wall time).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from objectives.registry import resolve_task
from storage import install_process_hooks
from sweeps.config.plan import budget_of
from sweeps.config.study_file import SweepConfig, parse_config
from sweeps.config.target import target_of
from sweeps.loop.runner import a_core_for_bookkeeping, run_sweep
from sweeps.search.space import suggest
from sweeps.trial.record import TrialRecord
from sweeps.trial.run_one import SweepObjective

STUDY_FILE = Path(__file__).resolve().parent.parent / "examples" / "digits.yaml"
N_TRAIN = 1438  # the digits task's training split (80% of 1797)


@dataclass
class Measured:
    name: str
    wall: float
    inside: float
    complete: int
    pruned: int
    examples: int

    @property
    def share(self) -> float:
        return (self.wall - self.inside) / self.wall


def service_config(folder: Path, n_trials: int, examples: int | None, seed: int) -> SweepConfig:
    """examples/digits.yaml with its own store; --examples rescales the budget, 10 evaluations each."""
    data = yaml.safe_load(STUDY_FILE.read_text())
    data["study"].update(storage="sqlite:///service.db", n_trials=n_trials, seed=seed)
    if examples is not None:
        data["budget"].update(per_trial=examples, eval_every=max(1, examples // 10))
    data["objective"]["fuse"] = "off"  # the service's overhead per trial, against the plain loop's: no fused groups
    return parse_config(data, folder)


def plain_sweep(storage: str, n_trials: int, config: SweepConfig) -> Measured:
    """The hand-written objective, on the study file's ranges, cap and pruner shape (in epochs)."""
    install_process_hooks()  # the service's SQLite settings (WAL, busy timeout) for this store too
    search, seed = config.search, config.study.seed
    batch_sizes = search.batch_size.values()
    max_epochs = max(1, round(config.budget.per_trial / N_TRAIN))
    min_epochs = max(1, round(config.budget.eval_every / N_TRAIN))
    inside = 0.0
    examples_seen = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal inside, examples_seen
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        batch_size = trial.suggest_categorical("batch_size", batch_sizes)
        lr = trial.suggest_float("lr", search.base_lr.low, search.base_lr.high, log=True)
        epochs = trial.suggest_int("epochs", search.epochs.low, search.epochs.high)
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
        best = 0.0
        for epoch in range(min(epochs, max_epochs)):
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
            examples_seen += len(x_train)
            best = max(best, accuracy)
            trial.report(accuracy, epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    started = time.perf_counter()
    study = optuna.create_study(
        storage=storage, direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=min_epochs, max_resource=max_epochs,
                                              reduction_factor=config.pruner.reduction_factor),
    )
    study.optimize(objective, n_trials=n_trials)
    wall = time.perf_counter() - started
    return Measured("plain Optuna", wall, inside, *counts(study), examples_seen)


def service_sweep(config: SweepConfig, show_progress: bool = False) -> tuple[Measured, optuna.Study]:
    started = time.perf_counter()
    study = run_sweep(config, target_of(config), show_progress=show_progress)
    wall = time.perf_counter() - started
    attrs = [t.user_attrs for t in study.trials]
    inside = sum(a.get("train_seconds", 0) + a.get("eval_seconds", 0) for a in attrs)
    examples_seen = sum(a.get("examples_seen", 0) for a in attrs)
    return Measured("service", wall, inside, *counts(study), examples_seen), study


def replay(config: SweepConfig, study: optuna.Study) -> tuple[float, int]:
    """Train each finished trial again alone; returns (train + eval seconds, examples seen).

    Same trial number (so seed), parameters and end: a pruned trial stops at its last recorded
    step, and early stopping, divergence and the budget end it as before (training is seeded; a
    diverged trial is PRUNED too, but no report ended it: its loss did, often between reports).
    """
    objective = SweepObjective(config, resolve_task(config.objective.task, config.base_dir), budget_of(config))
    inside, examples_seen = 0.0, 0
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        trial = optuna.trial.FixedTrial(frozen.params, number=frozen.number)
        stop = max(frozen.intermediate_values) if TrialRecord.of(frozen).stop_reason == "pruned" else None
        outcome = objective.run(trial, suggest(trial, config.search),
                                lambda value, step, value_se, stop=stop: stop is not None and step >= stop)
        if outcome.attrs.get("updates") != frozen.user_attrs.get("updates"):
            raise RuntimeError(f"trial {frozen.number} replayed {outcome.attrs.get('updates')} updates, "
                               f"not {frozen.user_attrs.get('updates')}")
        inside += outcome.attrs["train_seconds"] + outcome.attrs["eval_seconds"]
        examples_seen += outcome.attrs["examples_seen"]
    return inside, examples_seen


def counts(study: optuna.Study) -> tuple[int, int]:
    states = [t.state for t in study.trials]
    return states.count(TrialState.COMPLETE), states.count(TrialState.PRUNED)


def warm_up() -> None:
    """One-time costs (imports, torch's first backward and optimizer step) are no sweep's overhead."""
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    model = nn.Linear(64, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for xb, yb in DataLoader(TensorDataset(torch.randn(64, 64), torch.zeros(64, dtype=torch.long)), batch_size=32):
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=None, help="trials per sweep (default 30; 8 with --quick)")
    parser.add_argument("--examples", type=int, default=None,
                        help="training examples per trial (default: the study file's budget, 60000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 trials of 20000 examples")
    parser.add_argument("--no-replay", action="store_true",
                        help="take the service's train+eval time as its trials recorded it (see above)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed of both sweeps")
    parser.add_argument("--progress", action="store_true", help="the service sweep with its progress display on")
    args = parser.parse_args()
    n_trials = args.trials or (8 if args.quick else 30)
    examples = args.examples or (20000 if args.quick else None)
    optuna.logging.set_verbosity(logging.WARNING)
    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = service_config(folder, n_trials, examples, args.seed)
        plain = plain_sweep(f"sqlite:///{folder}/plain.db", n_trials, config)
        service, study = service_sweep(config, args.progress)
        rows = [plain, service]
        if not args.no_replay:
            with a_core_for_bookkeeping():  # the thread count the sweep trained with
                replayed, examples_seen = replay(config, study)
            rows.append(Measured(" trained alone", service.wall, replayed, service.complete, service.pruned,
                                 examples_seen))
            service = Measured("service", service.wall, min(service.inside, replayed), service.complete,
                               service.pruned, service.examples)
    budget = config.budget
    print(f"digits MLP, {n_trials} trials per sweep, at most {budget.per_trial:g} training examples per trial"
          f" (service evaluates every {budget.eval_every:g}, plain every epoch)")
    print(f"{'':<15}{'complete':>9}{'pruned':>7}{'examples':>10}{'ex/s':>8}{'wall s':>8}"
          f"{'train+eval s':>13}{'outside s':>10}{'per trial':>10}{'share':>7}")
    for m in rows:
        outside = m.wall - m.inside
        print(f"{m.name:<15}{m.complete:>9}{m.pruned:>7}{m.examples / 1e6:>9.2f}M{m.examples / m.inside:>8.0f}"
              f"{m.wall:>8.2f}{m.inside:>13.2f}{outside:>10.2f}{1000 * outside / n_trials:>8.1f}ms{m.share:>7.3f}")
    if not args.no_replay:
        print("service share below: outside = wall - the smaller train+eval (in the sweep, or trained alone)")
    print(f"overhead_share_service={service.share:.3f} overhead_share_plain={plain.share:.3f}")


if __name__ == "__main__":
    main()
