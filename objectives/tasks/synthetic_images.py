"""Synthetic 32x32 RGB images and a small ResNet: a task big enough to load a GPU, no download.

Each class is a fixed random low-frequency pattern; an example is its class pattern, randomly
shifted, plus noise, so the task is learnable but not trivial.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F

from objectives.task import VAL_ACCURACY, Task, TrialSettings, accuracy


@lru_cache(maxsize=2)
def image_tensors(n_train: int, n_val: int, classes: int, noise: float, data_seed: int):
    gen = torch.Generator().manual_seed(data_seed)
    coarse = torch.randn(classes, 3, 8, 8, generator=gen)
    patterns = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    n = n_train + n_val
    labels = torch.randint(0, classes, (n,), generator=gen)
    shifts = torch.randint(-3, 4, (n, 2), generator=gen)
    images = torch.empty(n, 3, 32, 32)
    for dx in range(-3, 4):
        for dy in range(-3, 4):
            rows = ((shifts[:, 0] == dx) & (shifts[:, 1] == dy)).nonzero().squeeze(1)
            images[rows] = torch.roll(patterns[labels[rows]], shifts=(dx, dy), dims=(2, 3))
    images += noise * torch.randn(n, 3, 32, 32, generator=gen)
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


def small_resnet(width: int = 32, blocks: int = 2, classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    c_in = width
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for i in range(blocks):
            layers.append(BasicBlock(c_in, c_out, 2 if (i == 0 and stage > 0) else 1))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes)]
    return nn.Sequential(*layers)


def resnet_synthetic(settings: TrialSettings) -> Task:
    opts = settings.options
    classes = int(opts.get("classes", 10))
    x_train, y_train, x_val, y_val = image_tensors(
        int(opts.get("n_train", 8192)), int(opts.get("n_val", 1024)), classes,
        float(opts.get("noise", 1.0)), int(opts.get("data_seed", 0)),
    )
    model = small_resnet(int(opts.get("width", 32)), int(opts.get("blocks", 2)), classes)
    return Task(model, (x_train, y_train), (x_val, y_val), nn.functional.cross_entropy, accuracy,
                metric_name=VAL_ACCURACY)
