"""A harder built-in task: a deep MLP learns a random nonlinear teacher from noisy labels.

Inputs x ~ N(0, I_d). A fixed random teacher network (two tanh layers) gives each input the class
with the largest teacher logit; a fraction `label_noise` of the training labels is replaced by a
uniformly random class, the validation labels stay clean. The student is an MLP of `depth` hidden
ReLU layers, so the learning rate, batch size and training length matter: too high an LR
diverges, too low underfits in the budget, and small batches at a high LR fit the noise. No
download, cheap on a CPU (4096 training examples of 8 features, 4 classes; 20% label noise).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from objectives.task import VAL_ACCURACY, Task, TrialSettings, accuracy


@lru_cache(maxsize=4)
def teacher_tensors(dim: int, classes: int, teacher_width: int, n_train: int, n_val: int,
                    label_noise: float, data_seed: int):
    gen = torch.Generator().manual_seed(data_seed)
    w1 = torch.randn(dim, teacher_width, generator=gen) * (2.0 / dim) ** 0.5
    w2 = torch.randn(teacher_width, teacher_width, generator=gen) * (2.0 / teacher_width) ** 0.5
    w3 = torch.randn(teacher_width, classes, generator=gen)
    x = torch.randn(n_train + n_val, dim, generator=gen)
    labels = (torch.tanh(torch.tanh(x @ w1) @ w2) @ w3).argmax(dim=1)
    flip = torch.rand(n_train, generator=gen) < label_noise
    noisy = labels[:n_train].clone()
    noisy[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=gen)
    return x[:n_train], noisy, x[n_train:], labels[n_train:]


def teacher_mlp(settings: TrialSettings) -> Task:
    opts = settings.options
    dim, classes = int(opts.get("dim", 8)), int(opts.get("classes", 4))
    x_train, y_train, x_val, y_val = teacher_tensors(
        dim, classes, int(opts.get("teacher_width", 32)), int(opts.get("n_train", 4096)), int(opts.get("n_val", 2048)),
        float(opts.get("label_noise", 0.2)), int(opts.get("data_seed", 0)),
    )
    width, depth = int(opts.get("width", 64)), int(opts.get("depth", 3))
    layers: list[nn.Module] = []
    fan_in = dim
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, classes))
    model = nn.Sequential(*layers)
    return Task(model, (x_train, y_train), (x_val, y_val), nn.functional.cross_entropy, accuracy,
                metric_name=VAL_ACCURACY)
