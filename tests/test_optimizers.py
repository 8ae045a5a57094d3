"""The trials' optimizers (`objectives.training.optimizers`): torch.optim's own classes with the
wrappers that import torch._dynamo unwrapped. They must train the same bits as torch.optim, and a
process that trains with them must not import torch._dynamo. A failure after a torch upgrade names
what it changed in torch.optim's wrappers; fix `eager`, nothing else."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from objectives.training.optimizers import OPTIMIZERS, eager
from tests.conftest import REPO, TINY, merged

SETTINGS = {  # each optimizer with settings off its defaults, weight decay included
    "sgd": {"lr": 0.2, "momentum": 0.9, "weight_decay": 1e-3},
    "adam": {"lr": 0.02, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 1e-2},
    "adamw": {"lr": 0.02, "betas": (0.85, 0.99), "eps": 1e-7, "weight_decay": 0.1},
}
REFERENCE = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def train(optimizer_class, settings: dict, updates: int = 30):
    """A small MLP trained `updates` steps with the LR changed between steps, as the loop does
    through `param_groups`; its weights and the optimizer's state, copied."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    optimizer = optimizer_class(model.parameters(), **settings)
    data = torch.Generator().manual_seed(1)
    for update in range(updates):
        x, y = torch.randn(24, 6, generator=data), torch.randint(0, 3, (24,), generator=data)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:
            group["lr"] = settings["lr"] * (1 - update / updates)
    state = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in optimizer.state[p].items()}
             for p in model.parameters()]
    return [p.detach().clone() for p in model.parameters()], state, optimizer


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_trains_torch_optims_bits(name):
    weights, state, optimizer = train(OPTIMIZERS[name], SETTINGS[name])
    ref_weights, ref_state, _ = train(REFERENCE[name], SETTINGS[name])
    assert isinstance(optimizer, REFERENCE[name]) and type(optimizer) is not REFERENCE[name]  # unwrapped, not the class
    assert all(torch.equal(a, b) for a, b in zip(weights, ref_weights, strict=True))
    assert [sorted(s) for s in state] == [sorted(s) for s in ref_state]
    for ours, theirs in zip(state, ref_state, strict=True):
        assert all(torch.equal(torch.as_tensor(ours[k]), torch.as_tensor(theirs[k])) for k in ours)
    assert torch.is_grad_enabled()  # the step's no_grad did not leak out


def test_a_step_runs_without_gradients_and_leaves_them_as_they_were(monkeypatch):
    model = torch.nn.Linear(3, 1)
    optimizer = OPTIMIZERS["sgd"](model.parameters(), lr=0.1)
    model(torch.ones(2, 3)).sum().backward()
    module = importlib.import_module("torch.optim.sgd")  # the module whose `sgd` SGD.step calls
    seen, original = [], module.sgd

    def spy(*args, **kwargs):
        seen.append(torch.is_grad_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "sgd", spy)
    optimizer.step()
    assert seen == [False] and torch.is_grad_enabled()


def test_a_class_with_nothing_to_unwrap_is_given_back_as_it_is():
    class Plain(torch.optim.Optimizer):
        def step(self, closure=None):
            return None

    assert eager(Plain) is Plain


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_an_optimizer_pickles_as_its_own_class(name):
    """As torch.optim's do (a trainer handed to another process, `torch.save` of a whole optimizer)."""
    _, _, optimizer = train(OPTIMIZERS[name], SETTINGS[name], updates=3)
    again = pickle.loads(pickle.dumps(optimizer))
    assert type(again) is OPTIMIZERS[name] and again.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert [sorted(s) for s in again.state.values()] == [sorted(s) for s in optimizer.state.values()]


def test_an_unfused_sweep_never_imports_torch_dynamo(tmp_path):
    """Each optimizer trains a sweep in a fresh process that never loads torch._dynamo (torch.optim's
    wrappers would import it on the first step: over a second of every worker's start)."""
    for name in sorted(OPTIMIZERS):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(merged(TINY, {"study": {"name": name, "n_trials": 2},
                                                      "objective": {"optimizer": name, "fuse": "off"}})))
    code = ("import sys; from sweeps.run import main; "
            "codes = [main([path, '--quiet']) for path in sys.argv[1:]]; "
            "print(codes, 'torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, *(str(tmp_path / f"{n}.yaml") for n in sorted(OPTIMIZERS))],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.stdout.splitlines()[-1] == "[0, 0, 0] False", done.stdout[-2000:] + done.stderr[-2000:]
    for name in sorted(OPTIMIZERS):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / (name + '.db')}")
        trials = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(trials) == 2 and not any(t.user_attrs.get("fused_group") for t in trials)
