"""CIFAR-10 from local files: a small ResNet, on-device random crop and flip, normalisation.

`objective.options.path` is either
- the CIFAR-10 "python version" folder (`data_batch_1` .. `data_batch_5` and `test_batch`,
  pickled dicts with b"data" uint8 [N, 3072] and b"labels"), as unpacked from
  cifar-10-python.tar.gz; any data_batch_* present are used, `test_batch` is the validation set;
- or an image folder: one subfolder per class of PNG/JPEG files (decoded with Pillow, converted to
  RGB and resized to `image_size`), either `train/` and `val/` (or `test/`) each with the class
  subfolders, or the class subfolders directly, in which case a fixed `val_fraction` of each class
  is held out (the same for every trial).

Nothing is downloaded. Images stay uint8 [N, 3, H, W] on the device (a quarter of float32); the
model's first layer scales and normalises them with the training set's per-channel mean and std.
Metric: validation accuracy (maximize).

Options: path, width (32), blocks (2), image_size (32, image folders only), max_train, max_val
(keep the first N examples of each split; an image folder's files are first shuffled once, with a
fixed seed), val_fraction (0.1, class folders only). The pickles are read with an unpickler that
loads numpy arrays and plain containers only.
"""

from __future__ import annotations

import os
import pickle
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn

from objectives.task import VAL_ACCURACY, Task, TrialSettings, accuracy
from objectives.tasks.datafiles import DataFileError, data_path, option
from objectives.tasks.synthetic_images import small_resnet

EXPECTED = ("a CIFAR-10 python batch folder (data_batch_1..5, test_batch) or an image folder "
            "(one subfolder of PNG/JPEG files per class)")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_SEED = 0
PAD = 4


class _ArraysOnly(pickle.Unpickler):
    """The CIFAR batches are pickles: load numpy arrays and plain containers, run nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 [N, 3, 32, 32], int64 [N])."""
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
    except Exception as err:
        raise DataFileError(path, f"expected a CIFAR-10 python batch (a pickled dict); "
                                  f"could not unpickle it: {type(err).__name__}: {err}") from None
    if not isinstance(batch, dict):
        raise DataFileError(path, f"expected a pickled dict with b'data' and b'labels', got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataFileError(path, "expected a pickled dict with keys b'data' and b'labels'")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataFileError(path, f"expected b'data' as uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(path, f"expected {len(data)} integer b'labels', got {labels.dtype} {list(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataFileError(path, f"expected labels in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar_folder(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    names = sorted(n for n in os.listdir(folder) if n.startswith("data_batch_"))
    test = os.path.join(folder, "test_batch")
    if not os.path.isfile(test):
        raise DataFileError(test, "missing: a CIFAR-10 python batch folder holds test_batch beside data_batch_*")
    parts = [read_cifar_batch(os.path.join(folder, n)) for n in names]
    x_val, y_val = read_cifar_batch(test)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_val, y_val, 10)


def class_folders(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def decode_image(path: str, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataFileError(path, f"expected a PNG or JPEG image: {err}") from None


def read_class_tree(root: str, classes: list[str], size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    images, labels, files = [], [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            continue
        for file in sorted(os.listdir(folder)):
            if file.lower().endswith(IMAGE_SUFFIXES):
                path = os.path.join(folder, file)
                images.append(decode_image(path, size))
                labels.append(label)
                files.append(path)
    x = np.stack(images) if images else np.zeros((0, 3, size, size), np.uint8)
    return x, np.asarray(labels, dtype=np.int64), files


def read_image_folder(root: str, size: int, val_fraction: float):
    splits = {d.lower(): d for d in class_folders(root)}
    val_name = splits.get("val") or splits.get("test")
    if "train" in splits and val_name:
        train_root, val_root = os.path.join(root, splits["train"]), os.path.join(root, val_name)
        classes = class_folders(train_root)
        if not classes:
            raise DataFileError(train_root, "expected one subfolder of PNG/JPEG files per class")
        x_train, y_train, _ = read_class_tree(train_root, classes, size)
        extra = sorted(set(class_folders(val_root)) - set(classes))
        if extra:
            raise DataFileError(val_root, f"class folders {extra} have no training folder in {train_root}")
        x_val, y_val, _ = read_class_tree(val_root, classes, size)
        where = (train_root, val_root)
    else:
        classes = class_folders(root)
        if not classes:
            raise DataFileError(root, f"expected {EXPECTED}")
        x, y, _ = read_class_tree(root, classes, size)
        order = np.random.RandomState(SPLIT_SEED).permutation(len(y))
        val_idx = np.concatenate([  # a fixed share of each class, the same for every trial
            order[y[order] == c][: int(round(val_fraction * (y == c).sum()))] for c in range(len(classes))
        ]) if len(y) else np.zeros(0, np.int64)
        val_mask = np.zeros(len(y), bool)
        val_mask[val_idx] = True
        x_train, y_train, x_val, y_val = x[~val_mask], y[~val_mask], x[val_mask], y[val_mask]
        where = (root, root)
    for folder, labels, split in ((where[0], y_train, "training"), (where[1], y_val, "validation")):
        if len(labels) == 0:
            raise DataFileError(folder, f"no {split} images: expected PNG/JPEG files in the class subfolders")
    # files come class by class: a fixed shuffle, so that max_train / max_val keep every class
    train_order = np.random.RandomState(SPLIT_SEED + 1).permutation(len(y_train))
    val_order = np.random.RandomState(SPLIT_SEED + 2).permutation(len(y_val))
    return x_train[train_order], y_train[train_order], x_val[val_order], y_val[val_order], len(classes)


@lru_cache(maxsize=2)
def cifar_arrays(path: str, image_size: int, val_fraction: float, max_train: int, max_val: int):
    """Read once per process (the factory runs per trial); `max_*` <= 0 keeps everything."""
    if os.path.isdir(path) and any(n.startswith("data_batch_") for n in os.listdir(path)):
        x_train, y_train, x_val, y_val, classes = read_cifar_folder(path)
    elif os.path.isdir(path):
        x_train, y_train, x_val, y_val, classes = read_image_folder(path, image_size, val_fraction)
    else:
        raise DataFileError(path, f"expected {EXPECTED}, not a file")
    if max_train > 0:
        x_train, y_train = x_train[:max_train], y_train[:max_train]
    if max_val > 0:
        x_val, y_val = x_val[:max_val], y_val[:max_val]
    mean = x_train.reshape(len(x_train), 3, -1).mean(axis=(0, 2)) / 255.0
    std = x_train.reshape(len(x_train), 3, -1).std(axis=(0, 2)) / 255.0
    return (torch.from_numpy(np.ascontiguousarray(x_train)), torch.from_numpy(y_train),
            torch.from_numpy(np.ascontiguousarray(x_val)), torch.from_numpy(y_val),
            classes, torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))


class Normalize(nn.Module):
    """uint8 images in, (x / 255 - mean) / std out: the data stays compact on the device."""

    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("std", std.clamp_min(1e-3).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


def random_crop_flip(batch: tuple[Tensor, Tensor], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Pad 4 with zeros, crop back to the original size at a random offset, flip half left-right.

    Runs on the batch's device; the random numbers come from `generator` (on any device), so the
    same generator state gives the same crops and flips."""
    x, y = batch
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator, device=generator.device).to(x.device)
    flips = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(x.device)
    padded = nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    cols = torch.where(flips.view(n, 1, 1, 1), cols.flip(3), cols)
    batch_idx = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel_idx = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch_idx, channel_idx, rows, cols], y


def cifar10(settings: TrialSettings) -> Task:
    path = data_path(settings, EXPECTED, sample="cifar10")
    x_train, y_train, x_val, y_val, classes, mean, std = cifar_arrays(
        path, option(settings, "image_size", 32, int, low=8), option(settings, "val_fraction", 0.1, float, 0.0, 0.9),
        option(settings, "max_train", 0), option(settings, "max_val", 0),
    )
    body = small_resnet(option(settings, "width", 32, int, low=1), option(settings, "blocks", 2, int, low=1), classes)
    model = nn.Sequential(Normalize(mean, std), body)
    return Task(model, (x_train, y_train), (x_val, y_val), nn.functional.cross_entropy, accuracy,
                augment=random_crop_flip, metric_name=VAL_ACCURACY)
