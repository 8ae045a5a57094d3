"""How close a horizon's branch is to its dedicated run on a device: the largest difference of
value and curve over several (batch size, LR, horizon), per precision.

On the CPU they are equal bit for bit (tests/test_horizons.py asserts it); on CUDA some kernels
are not deterministic, so this measures the tolerance to state. Run by benchmarks/gpu_checks.sh:

    python benchmarks/horizons_device.py --device cuda --precision fp32 bf16
"""

from __future__ import annotations

import argparse

import torch

from objectives.registry import resolve_task
from objectives.task import TrialSettings
from objectives.training.budget import Budget, plan_trial
from objectives.training.loop import Trainer
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule

CASES = [(16, 0.05, (300, 700)), (64, 0.2, (250, 500)), (256, 0.8, (100, 200))]  # (batch, lr, shorter horizons)
PER_TRIAL, EVAL_EVERY, WARMUP = 1000, 50, 20  # updates


def run(device: torch.device, precision: str, batch_size: int, lr: float, per_trial: int,
        horizons: tuple[int, ...] | None):
    torch.random.default_generator.manual_seed(5)
    if device.type == "cuda":
        torch.cuda.manual_seed(5)
    task = resolve_task("digits_mlp")(TrialSettings(batch_size=batch_size, lr=lr, seed=5, device=device))
    task.to(device)
    optimizer = torch.optim.SGD(task.model.parameters(), lr=lr, momentum=0.9)
    budget = Budget("updates", per_trial, EVAL_EVERY)
    plan = plan_trial(budget, task.n_train, batch_size)
    schedule = Schedule.build(lr, plan.planned_updates, 0.0, "wsd", 0.0, 0.2, warmup_updates=WARMUP)
    options = TrainerOptions(maximize=True, precision=precision, horizons=horizons)
    return Trainer(task, optimizer, schedule, plan, budget, options, seed=5).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()
    device = torch.device(args.device)
    for precision in args.precision:
        worst_value = worst_curve = 0.0
        for batch_size, lr, shorter in CASES:
            branched = run(device, precision, batch_size, lr, PER_TRIAL, (*shorter, PER_TRIAL))
            for horizon in branched.horizons[:-1]:
                dedicated = run(device, precision, batch_size, lr, int(horizon.units), None)
                worst_value = max(worst_value, abs(horizon.value - dedicated.best_value))
                curve = [abs(a[1] - b[1]) for a, b in zip(horizon.history, dedicated.history, strict=True)]
                worst_curve = max(worst_curve, *curve)
                print(f"{precision} B={batch_size} lr={lr} h={int(horizon.units)}: branch {horizon.value:.6f}, "
                      f"dedicated {dedicated.best_value:.6f}, largest curve difference {max(curve):.2e}")
        print(f"horizons_{device.type}_{precision}: largest value difference {worst_value:.2e}, "
              f"largest curve difference {worst_curve:.2e}")


if __name__ == "__main__":
    main()
