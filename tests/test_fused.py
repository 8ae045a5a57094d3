"""Several trials fused on one device (objectives/training/fused/): each member of a fused group
trains what it would train alone.

Tolerances, measured on the CPU (torch 2.13, 2 cores):
- the bmm path (stacks of linear layers), K = 1 and K = 4 with a different LR, weight decay and
  seed per member, SGD, Adam and AdamW: curves and best values equal to each member's solo
  `Trainer`, weights bit for bit on one machine and 1.2e-7 apart on another (an AMD EPYC), so the
  tests assert weights within 1e-5: bmm's per-member kernel need not sum as a lone Linear's addmm
  does on every CPU. K > 1 asserts the curve within one validation example. The recorded training
  loss (`last_train_loss`) may differ in the last bit at any K: the fused loss reduces a [K, B]
  tensor along dim 1, `cross_entropy` its own way (the gradient is the same);
- the vmap path (convolutions, batch norm): grouped convolutions sum in another order, weights
  within about 1e-4 after 60 updates, curves equal or one validation example apart;
- the stacked optimizers against torch.optim on each member's slice, grads given: bit for bit at
  K = 1 and at K = 4 with every hyperparameter different per member;
- the direct update (K > 1, linear layers and common activations, cross entropy, fp32: no autograd)
  against the autograd path of the same group: bit for bit, weights, curves and losses;
- `max_micro_batch` (gradient accumulation): as without it (a group of one exact, the update
  without autograd the autograd one bit for bit, K > 1 within the bmm tolerance);
- bf16 autocast: a group of one its solo bf16 run exactly; K = 3 on the bmm path equal here,
  asserted within one validation example and 1e-2; the vmap path within 6 examples and 2e-2
  (measured 1 example on one CPU, 4 on an AMD EPYC without AVX2; 7e-3 on both);
- dropout draws other masks than the solo run (one over the stacked batch): not reproduced, only
  in distribution.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from objectives.task import TrialSettings
from objectives.tasks.digits import digits_cnn, digits_mlp
from objectives.tasks.faults import OutOfMemoryAbove
from objectives.tasks.synthetic_images import resnet_synthetic
from objectives.training.budget import Budget, plan_trial
from objectives.training.fused import FusedMember, FusedTrainer, MemberOptimizer, NotFusable, stacked_optimizer
from objectives.training.fused.batched import stacked_cross_entropy
from objectives.training.fused.direct import direct_fits
from objectives.training.fused.model import LinearStack, fuse_models
from objectives.training.live import LiveTrial
from objectives.training.loop import Trainer
from objectives.training.options import EarlyStopping, TrainerOptions
from objectives.training.schedule import Schedule
from objectives.training.step import OutOfMemory
from sweeps.loop.progress import trial_text
from tests.tasks_for_tests import digits_golden

CPU = torch.device("cpu")
BUDGET = Budget("updates", 60, 20)
OPTIONS = TrainerOptions(maximize=True)
SGD = MemberOptimizer("sgd", momentum=0.9)


def build(factory, seed: int, batch_size: int = 32, options: dict | None = None):
    """The task as a trial builds it (`SweepObjective.make_task`): the model under the trial's seed."""
    torch.random.default_generator.manual_seed(seed)
    return factory(TrialSettings(batch_size, 0.1, seed, CPU, options=options or {})).to(CPU)


def member(seed: int, lr: float, optimizer: MemberOptimizer = SGD, factory=digits_mlp, budget: Budget = BUDGET,
           batch_size: int = 32, options: dict | None = None, reporter=None) -> FusedMember:
    task = build(factory, seed, batch_size, options)
    plan = plan_trial(budget, task.n_train, batch_size)
    schedule = Schedule.build(lr, plan.planned_updates, 0.1, "cosine", 0.0)
    return FusedMember(task, optimizer, schedule, plan, seed, reporter)


def torch_optimizer(settings: MemberOptimizer, params, lr: float) -> torch.optim.Optimizer:
    if settings.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    cls = torch.optim.Adam if settings.name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=settings.betas, eps=settings.eps, weight_decay=settings.weight_decay)


def solo(m: FusedMember, factory=digits_mlp, budget: Budget = BUDGET, options: TrainerOptions = OPTIONS,
         task_options: dict | None = None, reporter=None):
    """The member trained alone by the service's `Trainer`: its result and its model."""
    task = build(factory, m.seed, m.plan.batch_size, task_options)
    optimizer = torch_optimizer(m.optimizer, task.model.parameters(), m.schedule.peak_lr)
    result = Trainer(task, optimizer, m.schedule, m.plan, budget, options, seed=m.seed, reporter=reporter).train()
    return result, task.model


def weights(model) -> list[torch.Tensor]:
    return [t.float() for t in model.state_dict().values()]


def same_weights(a, b) -> bool:
    """The two models' weights equal to float rounding: the fused bmm and a lone Linear's addmm may sum in a
    different order on some CPUs (an AMD EPYC gave 1.2e-7 apart after 3 epochs), while the metrics match."""
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(weights(a), weights(b)))


def assert_each_as_alone(members, results, examples: float, atol: float, factory=digits_mlp, budget: Budget = BUDGET,
                         options: TrainerOptions = OPTIONS) -> None:
    """Each member's curve at its solo run's steps, within `examples` validation examples of its
    values; its weights within `atol` of the solo run's."""
    n_val = len(members[0].task.val[0])
    for m, fused in zip(members, results):
        alone, model = solo(m, factory, budget, options=options)
        assert [s for s, _ in fused.history] == [s for s, _ in alone.history]
        assert [v for _, v in fused.history] == pytest.approx([v for _, v in alone.history],
                                                              abs=(examples + 0.01) / n_val)
        for a, b in zip(weights(model), weights(m.task.model)):
            torch.testing.assert_close(b, a, rtol=0, atol=atol)


def test_one_member_fused_is_the_solo_trial():
    m = member(11, 0.1)
    trainer = FusedTrainer([m], BUDGET, OPTIONS)
    (fused,) = trainer.train()
    alone, model = solo(m)
    assert trainer.path == "bmm"
    assert fused.history == alone.history and len(alone.history) == 3
    assert (fused.best_value, fused.best_step, fused.updates, fused.examples_seen, fused.stop_reason) == (
        alone.best_value, alone.best_step, alone.updates, alone.examples_seen, alone.stop_reason)
    assert same_weights(model, m.task.model)
    assert fused.last_train_loss == pytest.approx(alone.last_train_loss, rel=1e-6)


@pytest.mark.parametrize("optimizer", [MemberOptimizer("sgd", momentum=0.9, weight_decay=1e-3),
                                       MemberOptimizer("adam", weight_decay=1e-3),
                                       MemberOptimizer("adamw", betas=(0.8, 0.99), weight_decay=0.05)],
                         ids=lambda o: o.name)
def test_each_of_four_members_trains_as_its_solo_run(optimizer):
    lrs = [0.05, 0.1, 0.02, 0.2] if optimizer.name == "sgd" else [1e-3, 3e-3, 1e-2, 2e-3]
    members = [member(21 + i, lr, optimizer) for i, lr in enumerate(lrs)]
    assert_each_as_alone(members, FusedTrainer(members, BUDGET, OPTIONS).train(), examples=1, atol=1e-5)


ACTIVATIONS = [nn.ReLU(), nn.LeakyReLU(0.1), nn.GELU(), nn.GELU("tanh"), nn.SiLU(), nn.Tanh(), nn.Sigmoid(),
               nn.Identity()]


def mlp_members(activation: nn.Module, lrs=(0.05, 0.2, 0.1), optimizer: MemberOptimizer = SGD) -> list[FusedMember]:
    """Digits members whose model is a 3-layer MLP with `activation`, each built under its seed."""
    members = [member(101 + i, lr, optimizer) for i, lr in enumerate(lrs)]
    for m in members:
        torch.random.default_generator.manual_seed(m.seed)
        m.task.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), copy.deepcopy(activation), nn.Linear(24, 16),
                                     copy.deepcopy(activation), nn.Linear(16, 10))
    return members


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=repr)
def test_the_direct_update_is_the_autograd_update_bit_for_bit(activation):
    """A group of linear layers and one of the supported activations skips autograd: the same
    kernels in the same order, so every member's curve, loss and weights equal the autograd path's."""
    direct, graph = mlp_members(activation), mlp_members(activation)
    fast = FusedTrainer(direct, BUDGET, OPTIONS)
    slow = FusedTrainer(graph, BUDGET, OPTIONS)
    slow.direct = False
    assert fast.direct
    for a, b, m, n in zip(fast.train(), slow.train(), direct, graph):
        assert (a.history, a.last_train_loss, a.updates, a.stop_reason) == (
            b.history, b.last_train_loss, b.updates, b.stop_reason)
        assert all(torch.equal(x, y) for x, y in zip(weights(m.task.model), weights(n.task.model)))


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_direct_update_with_a_diverging_member_is_the_autograd_update(name):
    """AdamW and SGD, one member diverging (it leaves, the group goes on at K = 2, then the last
    ones at K = 1 through the solo kernels): still bit for bit the autograd path's."""
    optimizer = MemberOptimizer(name, momentum=0.9, weight_decay=0.01)
    lrs = (1e-3, 1e4, 3e-3) if name == "adamw" else (0.05, 1e4, 0.1)
    direct, graph = mlp_members(nn.ReLU(), lrs, optimizer), mlp_members(nn.ReLU(), lrs, optimizer)
    slow = FusedTrainer(graph, BUDGET, OPTIONS)
    slow.direct = False
    results = FusedTrainer(direct, BUDGET, OPTIONS).train()
    assert results[1].stop_reason == "diverged"
    for a, b, m, n in zip(results, slow.train(), direct, graph):
        assert (a.stop_reason, a.updates) == (b.stop_reason, b.updates)
        assert str(a.history) == str(b.history)  # nan == nan
        for x, y in zip(weights(m.task.model), weights(n.task.model)):
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)  # the diverged member's: nan


def test_what_the_direct_update_leaves_to_autograd():
    def fused(*layers):
        return fuse_models([nn.Sequential(*layers) for _ in range(2)])

    assert direct_fits(fused(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), stacked_cross_entropy, "fp32")
    assert not direct_fits(fused(nn.Linear(4, 3), nn.Dropout(0.1), nn.Linear(3, 2)), stacked_cross_entropy, "fp32")
    assert not direct_fits(fused(nn.Linear(4, 3), nn.ELU(), nn.Linear(3, 2)), stacked_cross_entropy, "fp32")
    assert not direct_fits(fused(nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 2)), stacked_cross_entropy,
                           "fp32")
    assert not direct_fits(fused(nn.Linear(4, 3), nn.Flatten(), nn.Linear(3, 2)), stacked_cross_entropy, "fp32")
    assert not direct_fits(fused(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), stacked_cross_entropy, "bf16")
    assert not direct_fits(fused(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), torch.vmap(nn.functional.mse_loss),
                           "fp32")
    assert not direct_fits(fuse_models([digits_cnn(TrialSettings(32, 0.1, 0, CPU)).model] * 2),
                           stacked_cross_entropy, "fp32")


BF16 = TrainerOptions(maximize=True, precision="bf16")


def test_bf16_fuses_a_group_of_one_exactly_and_more_within_its_tolerance():
    """Under bf16 autocast a group of one is its solo bf16 run exactly (the same kernels); K = 3
    goes through autograd (the update without it is fp32 only), its products in bf16 as the solo
    run's. Equal here (AMD EPYC, torch 2.13); asserted within one validation example and 1e-2 in
    the weights, as bf16's batched products may sum in another order elsewhere."""
    (one,) = [member(111, 0.1)]
    trainer = FusedTrainer([one], BUDGET, BF16)
    (fused,) = trainer.train()
    alone, model = solo(one, options=BF16)
    assert fused.history == alone.history and same_weights(model, one.task.model)
    members = [member(112 + i, lr) for i, lr in enumerate([0.05, 0.2, 0.1])]
    trainer = FusedTrainer(members, BUDGET, BF16)
    assert not trainer.direct
    assert_each_as_alone(members, trainer.train(), examples=1, atol=1e-2, options=BF16)


ACCUMULATE = TrainerOptions(maximize=True, max_micro_batch=12)  # batch 32 in 3 micro-batches: 11, 11, 10


def test_accumulation_splits_each_members_batch_as_its_solo_run_splits_it():
    """`max_micro_batch`: a group of one is its solo run with the same accumulation exactly; a
    group of 3 without autograd is the autograd path bit for bit, and each member its solo run
    within the bmm tolerance."""
    (one,) = [member(141, 0.1)]
    (fused,) = FusedTrainer([one], BUDGET, ACCUMULATE).train()
    alone, model = solo(one, options=ACCUMULATE)
    assert (fused.accumulation_steps, fused.micro_batch) == (alone.accumulation_steps, alone.micro_batch) == (3, 11)
    assert fused.history == alone.history and same_weights(model, one.task.model)
    assert fused.last_train_loss == pytest.approx(alone.last_train_loss, rel=1e-6)
    direct, graph = mlp_members(nn.ReLU()), mlp_members(nn.ReLU())
    slow = FusedTrainer(graph, BUDGET, ACCUMULATE)
    slow.direct = False
    for a, b, m, n in zip(FusedTrainer(direct, BUDGET, ACCUMULATE).train(), slow.train(), direct, graph):
        assert (a.history, a.last_train_loss, a.accumulation_steps) == (b.history, b.last_train_loss, 3)
        assert all(torch.equal(x, y) for x, y in zip(weights(m.task.model), weights(n.task.model)))
    members = [member(142 + i, lr) for i, lr in enumerate([0.05, 0.2, 0.1])]
    trainer = FusedTrainer(members, BUDGET, ACCUMULATE)
    assert trainer.direct
    assert_each_as_alone(members, trainer.train(), examples=1, atol=1e-5, options=ACCUMULATE)


def test_a_group_out_of_memory_halves_its_micro_batch_as_one():
    """A training forward pass on more than 12 examples raises the real `torch.cuda.OutOfMemoryError`
    (objectives/tasks/faults.py): the group halves its micro-batch as one (32 -> 16 -> 8), and each
    member trains what its solo run with 4 micro-batches trains (the vmap path's tolerance)."""
    members = [member(151 + i, lr) for i, lr in enumerate([0.05, 0.1])]
    for m in members:
        m.task.model = OutOfMemoryAbove(m.task.model, 12)
    trainer = FusedTrainer(members, BUDGET, OPTIONS)
    results = trainer.train()
    assert trainer.path == "vmap"
    assert all((r.accumulation_steps, r.micro_batch, r.updates) == (4, 8, BUDGET.per_trial) for r in results)
    assert_each_as_alone(members, results, examples=2, atol=1e-3,
                         options=TrainerOptions(maximize=True, max_micro_batch=8))
    hopeless = [member(153 + i, 0.1) for i in range(2)]
    for m in hopeless:
        m.task.model = OutOfMemoryAbove(m.task.model, 0)
    with pytest.raises(OutOfMemory, match="a micro-batch of 1 does not fit in a fused group of 2"):
        FusedTrainer(hopeless, BUDGET, OPTIONS).train()


def test_the_live_display_shows_a_group_by_its_first_member_and_its_size():
    """The progress line of a fused group: its first member's trial, point, progress and last
    evaluation, and how many train with it; when that member leaves, the next one."""
    live = LiveTrial()
    seen = []

    def reporter(value, step, se):
        seen.append(live.read())
        return False

    members = [member(161 + i, lr, reporter=reporter) for i, lr in enumerate([0.05, 0.1, 0.2])]
    members[0].reporter = lambda value, step, se: seen.append(live.read()) or True  # pruned at its first
    for i, m in enumerate(members):
        m.trial = 7 + i
    FusedTrainer(members, BUDGET, OPTIONS, live=live).train()
    first, after = seen[0], seen[3]  # at the first evaluation (3 members), at the second (2)
    assert (first.trial, first.group, first.batch_size, first.fraction) == (7, 3, 32, pytest.approx(20 / 60))
    assert first.eval_step is None and first.spent_units == pytest.approx(3 * 20)
    assert (after.trial, after.group, after.fraction, after.eval_step) == (8, 2, pytest.approx(40 / 60), 20)
    assert trial_text(after, "val_accuracy").startswith("trial 8 (batch 32, lr 0.1) +1 fused 67%, val_accuracy ")

@pytest.mark.parametrize(("options", "budget", "seed", "examples", "atol"), [
    (OPTIONS, Budget("updates", 30, 15), 31, 2, 1e-3),
    # bf16: curves 1 validation example apart on one CPU, 4 on an AMD EPYC without AVX2 (its bf16
    # kernels round otherwise); weights 7e-3 apart on both
    (BF16, Budget("updates", 20, 10), 131, 6, 2e-2),
], ids=["fp32", "bf16"])
def test_the_vmap_path_fuses_convolutions_within_its_tolerance(options, budget, seed, examples, atol):
    members = [member(seed + i, lr, factory=digits_cnn, budget=budget) for i, lr in enumerate([0.05, 0.1])]
    trainer = FusedTrainer(members, budget, options)
    results = trainer.train()
    assert trainer.path == "vmap"
    assert_each_as_alone(members, results, examples=examples, atol=atol, factory=digits_cnn, budget=budget,
                         options=options)


def test_batch_norm_keeps_running_statistics_per_member():
    options = {"n_train": 128, "n_val": 64, "width": 4, "blocks": 1}
    budget = Budget("updates", 4, 4)
    members = [member(41 + i, lr, factory=resnet_synthetic, budget=budget, options=options)
               for i, lr in enumerate([0.05, 0.2])]
    FusedTrainer(members, budget, OPTIONS).train()
    means = [m.task.model[1].running_mean for m in members]  # the stem's batch norm
    assert not torch.equal(means[0], means[1])
    for m, mean in zip(members, means):
        _, model = solo(m, resnet_synthetic, budget, task_options=options)
        assert model[1].num_batches_tracked.item() == 4
        torch.testing.assert_close(mean, model[1].running_mean, rtol=0, atol=1e-4)


def test_a_diverging_member_leaves_the_others_unchanged():
    calm = [member(51, 0.05), member(53, 0.1)]
    with_wild = [member(51, 0.05), member(52, 1e4), member(53, 0.1)]
    alone = FusedTrainer(calm, BUDGET, OPTIONS).train()
    together = FusedTrainer(with_wild, BUDGET, OPTIONS).train()
    assert together[1].stop_reason == "diverged" and together[1].updates < BUDGET.per_trial
    for a, b, m, n in zip(alone, [together[0], together[2]], calm, [with_wild[0], with_wild[2]]):
        assert (a.history, a.best_value, a.stop_reason) == (b.history, b.best_value, b.stop_reason)
        assert all(torch.equal(x, y) for x, y in zip(weights(m.task.model), weights(n.task.model)))


def test_a_pruned_member_leaves_and_early_stopping_is_per_member():
    options = TrainerOptions(maximize=True, early_stopping=EarlyStopping(patience=1, min_delta=0.02))
    budget = Budget("updates", 120, 20)
    members = [member(61, 0.05, budget=budget, reporter=lambda value, step, se: True),
               member(62, 0.1, budget=budget), member(63, 0.02, budget=budget)]
    results = FusedTrainer(members, budget, options).train()
    assert results[0].stop_reason == "pruned" and len(results[0].history) == 1
    for m, fused in zip(members[1:], results[1:]):
        alone, model = solo(m, budget=budget, options=options)
        assert (fused.history, fused.stop_reason, fused.updates) == (alone.history, alone.stop_reason, alone.updates)
        assert same_weights(model, m.task.model)
    assert "early_stopping" in {r.stop_reason for r in results[1:]}


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("k", [1, 4])
def test_stacked_optimizers_update_each_member_as_torch_optim(name, k):
    gen = torch.Generator().manual_seed(k)
    settings = [MemberOptimizer(name, momentum=0.5 + 0.1 * i, weight_decay=0.01 * i, betas=(0.9 - 0.05 * i, 0.99),
                                eps=10.0 ** (-8 + i)) for i in range(k)]
    lrs = [0.1 / (i + 1) for i in range(k)]
    stacked = [torch.randn(k, 5, 3, generator=gen).requires_grad_(), torch.randn(k, 5, generator=gen).requires_grad_()]
    singles = [[p[i].detach().clone().requires_grad_() for p in stacked] for i in range(k)]
    optimizer = stacked_optimizer(stacked, settings)
    references = [torch_optimizer(s, params, lr) for s, params, lr in zip(settings, singles, lrs)]
    for step in range(6):
        grads = [torch.randn(p.shape, generator=gen) for p in stacked]
        for p, g in zip(stacked, grads):
            p.grad = g.clone()
        optimizer.lrs = [lr * (1 - step / 10) for lr in lrs]
        optimizer.step()
        for i, (params, reference) in enumerate(zip(singles, references)):
            for p, g in zip(params, grads):
                p.grad = g[i].clone()
            reference.param_groups[0]["lr"] = optimizer.lrs[i]
            reference.step()
        for i, params in enumerate(singles):
            for p, q in zip(stacked, params):
                assert torch.equal(p[i].detach(), q.detach()), (name, k, step, i)
    if k > 1:  # a member leaves: the others go on from their own state
        keep = [0, 2]
        optimizer.keep(keep, [p.detach()[keep].requires_grad_() for p in stacked])
        grads = [torch.randn(p.shape, generator=gen) for p in optimizer.params]
        for p, g in zip(optimizer.params, grads):
            p.grad = g.clone()
        optimizer.step()
        for row, i in enumerate(keep):
            for p, g in zip(singles[i], grads):
                p.grad = g[row].clone()
            references[i].step()
            assert all(torch.equal(p[row].detach(), q.detach()) for p, q in zip(optimizer.params, singles[i]))


def test_each_members_value_standard_errors_are_its_solo_runs():
    """measure.value_se fuses: a group of one records its solo run's standard errors exactly; in a
    group of three each member's are its solo run's, within what one validation example moves
    sqrt(p (1 - p) / n) (at most 1 / n), and its pruner sees each one."""
    options = TrainerOptions(maximize=True, measure_value_se=True)
    m = member(11, 0.1)
    (one,) = FusedTrainer([m], BUDGET, options).train()
    alone, _ = solo(m, options=options)
    assert one.value_se_curve == alone.value_se_curve and len(alone.value_se_curve) == 3
    seen: list[list] = [[], [], []]
    members = [member(31 + i, lr, reporter=lambda v, step, se, i=i: seen[i].append((step, se)) and False)
               for i, lr in enumerate((0.05, 0.2, 0.1))]
    n_val = len(members[0].task.val[0])
    for i, (m, fused) in enumerate(zip(members, FusedTrainer(members, BUDGET, options).train())):
        alone, _ = solo(m, options=options)
        assert [s for s, _ in fused.value_se_curve] == [s for s, _ in alone.value_se_curve]
        assert [se for _, se in fused.value_se_curve] == pytest.approx([se for _, se in alone.value_se_curve],
                                                                      abs=1.01 / n_val)
        assert seen[i] == fused.value_se_curve and all(0 < se < 0.05 for _, se in seen[i])


def test_each_members_noise_scale_is_its_solo_runs():
    """measure.noise_scale fuses: on a measured update the group's batch is split as a run alone
    splits it, and each member measures B_simple from its own slices of the micro-batches'
    gradients. A group of one trains and measures as its solo run exactly; in a group of three
    each member's curve is its solo run's within float rounding of the same measurement, and its
    evaluations within one validation example."""
    options = TrainerOptions(maximize=True, measure_noise=True)
    m = member(11, 0.1)
    (one,) = FusedTrainer([m], BUDGET, options).train()
    alone, _ = solo(m, options=options)
    assert one.noise_scale_curve == alone.noise_scale_curve and len(alone.noise_scale_curve) == 3
    assert one.history == alone.history
    members = [member(31 + i, lr) for i, lr in enumerate((0.05, 0.2, 0.1))]
    results = FusedTrainer(members, BUDGET, options).train()
    assert_each_as_alone(members, results, examples=1, atol=1e-4, options=options)
    for m, fused in zip(members, results):
        alone, _ = solo(m, options=options)
        assert [s for s, _ in fused.noise_scale_curve] == [s for s, _ in alone.noise_scale_curve]
        assert [b for _, b in fused.noise_scale_curve] == pytest.approx([b for _, b in alone.noise_scale_curve],
                                                                       rel=1e-3)


def test_what_cannot_fuse_says_why():
    other = member(72, 0.1, options={"hidden": 64})
    with pytest.raises(NotFusable, match="architectures differ: member 1 differs from member 0 in parameter '0.bias'"):
        FusedTrainer([member(71, 0.1), other], BUDGET, OPTIONS)
    with pytest.raises(NotFusable, match="batch 64, member 0 with 32"):
        FusedTrainer([member(71, 0.1), member(72, 0.1, batch_size=64)], BUDGET, OPTIONS)
    with pytest.raises(NotFusable, match="augments"):
        FusedTrainer([member(73, 0.1, factory=digits_golden)], BUDGET, OPTIONS)
    with pytest.raises(NotFusable, match="timed"):
        FusedTrainer([member(71, 0.1)], Budget("seconds", 1.0, 0.5), OPTIONS)
    with pytest.raises(NotFusable, match="schedule.cooldown_evaluations is not measured in a fused group"):
        FusedTrainer([member(71, 0.1)], BUDGET, TrainerOptions(maximize=True, cooldown_fraction=0.1))
    with pytest.raises(NotFusable, match="bmm path"):
        FusedTrainer([member(74, 0.1, factory=digits_cnn)], BUDGET, OPTIONS, path="bmm")


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_refill_takes_the_free_slot_and_trains_as_its_solo_run(name):
    """A member pruned at its first evaluation leaves; the refill joins at the next epoch start
    (digits' last batch is short), in a slot reset to its own weights and a fresh optimizer state,
    and every member, the refills too, trains what it trains alone."""
    optimizer = MemberOptimizer(name, momentum=0.9) if name == "sgd" else MemberOptimizer(name)
    lrs = [0.05, 0.1] if name == "sgd" else [1e-3, 3e-3]
    members = [member(81, lrs[0], optimizer, reporter=lambda value, step, se: True), member(82, lrs[1], optimizer)]
    queue = [member(83 + i, lrs[i % 2], optimizer) for i in range(2)]
    left = []
    trainer = FusedTrainer(members, BUDGET, OPTIONS, refill=lambda: queue.pop(0) if queue else None,
                           on_leave=lambda m, result: left.append((m.seed, result.stop_reason)))
    results = trainer.train()
    assert len(results) == 4 and not queue
    assert [seed for seed, _ in left][:1] == [81] and sorted(seed for seed, _ in left) == [81, 82, 83, 84]
    n_val = len(members[0].task.val[0])
    for m, fused in zip(trainer.members[1:], results[1:]):
        alone, model = solo(m)
        assert [s for s, _ in fused.history] == [s for s, _ in alone.history]
        assert [v for _, v in fused.history] == pytest.approx([v for _, v in alone.history], abs=1.01 / n_val)
        assert (fused.updates, fused.stop_reason) == (alone.updates, alone.stop_reason)
        for a, b in zip(weights(model), weights(m.task.model)):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_only_the_members_due_are_evaluated_when_a_refill_joined_off_the_grid(monkeypatch):
    """A refill joins at an epoch start (45 updates into digits), off the others' grid of 20: each
    evaluation then takes only the members due, as a model of their own, and each member's curve
    is still its solo run's."""
    evaluated: list[int] = []
    shared_outputs = LinearStack.shared_outputs

    def counted(self, x):
        evaluated.append(self.weights.size)
        return shared_outputs(self, x)

    monkeypatch.setattr(LinearStack, "shared_outputs", counted)
    budget = Budget("updates", 100, 20)
    members = [member(91, 0.05, budget=budget, reporter=lambda value, step, se: step == 20),
               member(92, 0.1, budget=budget)]
    queue = [member(93, 0.02, budget=budget)]
    trainer = FusedTrainer(members, budget, OPTIONS, refill=lambda: queue.pop(0) if queue else None)
    results = trainer.train()
    assert not queue and results[0].stop_reason == "pruned"
    # 92 is evaluated at 20 with 91 (both due), then alone at 40 .. 100; 93, joined at update 45,
    # alone at its 20 .. 100: never a member that is not due
    assert evaluated == [2] + [1] * 9
    n_val = len(members[0].task.val[0])
    for m, fused in zip(trainer.members[1:], results[1:]):
        alone, _ = solo(m, budget=budget)
        assert [s for s, _ in fused.history] == [s for s, _ in alone.history]
        assert [v for _, v in fused.history] == pytest.approx([v for _, v in alone.history], abs=1.01 / n_val)


def test_a_member_pruned_at_its_last_planned_evaluation_ends_on_its_plan_as_alone():
    """`Trainer`: a trial pruned (or stopped early) at its last planned update was over anyway, so
    it ends on its plan (budget), not pruned; a fused member the same."""
    last = BUDGET.to_step(BUDGET.per_trial, 1)

    def reporter(value, step, se):
        return step == last

    m = member(91, 0.1, reporter=reporter)
    (fused,) = FusedTrainer([m, member(92, 0.05)], BUDGET, OPTIONS).train()[:1]
    alone, _ = solo(m, reporter=reporter)
    assert (fused.stop_reason, fused.updates, fused.history) == (alone.stop_reason, alone.updates, alone.history)
    assert fused.stop_reason == "budget"
