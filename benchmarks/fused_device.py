"""How close each member of a fused group is to its run alone on a device: the largest difference
of curve (in validation examples) and weights, per path and precision, and the same for horizons
answered in a fused group.

On the CPU the tests assert it (tests/test_fused.py, tests/test_fused_horizons.py: a group of one
exactly, K > 1 within one validation example on the bmm path); on CUDA the batched kernels sum in
their own order and some are not deterministic, so this measures the tolerance to state. Run by
benchmarks/gpu_checks.sh:

    python benchmarks/fused_device.py --device cuda --precision fp32 bf16
"""

from __future__ import annotations

import argparse

import torch

from objectives.registry import resolve_task
from objectives.task import TrialSettings
from objectives.training.budget import Budget, plan_trial
from objectives.training.fused import FusedMember, FusedTrainer, MemberOptimizer
from objectives.training.loop import Trainer
from objectives.training.options import TrainerOptions
from objectives.training.schedule import Schedule

OPTIMIZER = MemberOptimizer("sgd", momentum=0.9, weight_decay=1e-4)
LRS = (0.01, 0.02, 0.04, 0.08)  # stable: at 0.2 digits training is chaotic, and any rounding grows
CASES = [("digits_mlp", 32, 1), ("digits_mlp", 32, 4), ("digits_mlp", 256, 4), ("digits_cnn", 64, 4)]
BUDGET = Budget("updates", 300, 50)
HORIZONS = (75, 150, 300)  # updates; the last is the run's own
WARMUP = 10


def member(task: str, seed: int, lr: float, batch_size: int, device: torch.device, budget: Budget) -> FusedMember:
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)
    built = resolve_task(task)(TrialSettings(batch_size=batch_size, lr=lr, seed=seed, device=device)).to(device)
    plan = plan_trial(budget, built.n_train, batch_size)
    schedule = Schedule.build(lr, plan.planned_updates, 0.0, "wsd", 0.0, 0.2, warmup_updates=WARMUP)
    return FusedMember(built, OPTIMIZER, schedule, plan, seed)


def alone(task: str, m: FusedMember, device: torch.device, budget: Budget, options: TrainerOptions):
    twin = member(task, m.seed, m.schedule.peak_lr, m.plan.batch_size, device, budget)
    optimizer = torch.optim.SGD(twin.task.model.parameters(), lr=m.schedule.peak_lr, momentum=OPTIMIZER.momentum,
                                weight_decay=OPTIMIZER.weight_decay)
    result = Trainer(twin.task, optimizer, twin.schedule, twin.plan, budget, options, seed=m.seed).train()
    return result, twin.task.model


def largest(pairs) -> float:
    return max((abs(a - b) for a, b in pairs), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()
    device = torch.device(args.device)
    for precision in args.precision:
        for horizons in (None, HORIZONS):
            options = TrainerOptions(maximize=True, precision=precision, horizons=horizons)
            for task, batch_size, k in CASES:
                if horizons is not None and task != "digits_mlp":
                    continue
                members = [member(task, 100 + i, LRS[i], batch_size, device, BUDGET) for i in range(k)]
                trainer = FusedTrainer(members, BUDGET, options)
                results = trainer.train()
                n_val = len(members[0].task.val[0])
                curve = weights = 0.0
                exact = True
                for m, fused in zip(members, results, strict=True):
                    solo, model = alone(task, m, device, BUDGET, options)
                    runs = [(fused.history, solo.history)]
                    if horizons is not None:
                        runs += [(f.history, s.history) for f, s in zip(fused.horizons, solo.horizons, strict=True)]
                    for f, s in runs:
                        assert [step for step, _ in f] == [step for step, _ in s], "evaluation steps differ"
                        curve = max(curve, largest((a, b) for (_, a), (_, b) in zip(f, s)) * n_val)
                        exact &= f == s
                    weights = max(weights, *((a.float() - b.float()).abs().max().item() for a, b in
                                             zip(model.state_dict().values(), m.task.model.state_dict().values())))
                label = f"{task} B={batch_size} K={k} path={trainer.path}" + (" horizons" if horizons else "")
                print(f"fused_{device.type}_{precision} {label}: largest curve difference {curve:.2f} validation "
                      f"examples, largest weight difference {weights:.2e}, curves equal: {exact}", flush=True)


if __name__ == "__main__":
    main()
