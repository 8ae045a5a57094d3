"""Small sample files in the real formats, for the examples and tests when the real data is not
on the machine. Nothing is downloaded; every file is generated from a fixed seed.

    python -m objectives.tasks.samples cifar10 OUT   # CIFAR-10 python batch folder
    python -m objectives.tasks.samples images OUT    # image folder: class subfolders of PNG/JPEG
    python -m objectives.tasks.samples char_lm OUT   # a UTF-8 text file
    python -m objectives.tasks.samples csv OUT       # a CSV file (target columns: species, price)

The images are learnable but not trivial: each class is a fixed low-frequency colour pattern,
randomly shifted, plus noise.
"""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import random
import sys

import numpy as np

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def pattern_images(n: int, classes: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 3, size, size] and int64 labels [n]."""
    rng = np.random.RandomState(seed)
    coarse = rng.randn(1, 3, 4, 4) + 0.25 * rng.randn(classes, 3, 4, 4)  # classes alike: not trivial
    grid = np.linspace(0, 3, size)
    i0 = np.floor(grid).astype(int).clip(0, 2)
    frac = grid - i0
    rows = coarse[:, :, i0, :] * (1 - frac)[None, None, :, None] + coarse[:, :, i0 + 1, :] * frac[None, None, :, None]
    patterns = rows[:, :, :, i0] * (1 - frac) + rows[:, :, :, i0 + 1] * frac  # bilinear, [classes, 3, size, size]
    labels = rng.randint(0, classes, n)
    shifts = rng.randint(-3, 4, (n, 2))
    images = np.stack([np.roll(patterns[c], tuple(s), axis=(1, 2)) for c, s in zip(labels, shifts)])
    images = images + 1.5 * rng.randn(*images.shape)
    return np.clip(images * 48 + 128, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_cifar10(out: str, per_batch: int = 200, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    """data_batch_1..5 and test_batch, as in cifar-10-python.tar.gz (dicts with bytes keys)."""
    os.makedirs(out, exist_ok=True)
    images, labels = pattern_images(6 * per_batch, len(CIFAR_CLASSES))
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        part = slice(i * per_batch, (i + 1) * per_batch)
        batch = {
            b"batch_label": f"sample {name}".encode(),
            b"labels": [int(v) for v in labels[part]],
            b"data": images[part].reshape(per_batch, 3072),
            b"filenames": [f"{name}_{j}.png".encode() for j in range(per_batch)],
        }
        with open(os.path.join(out, name), "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    with open(os.path.join(out, "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=protocol)


def write_image_folder(out: str, per_class: int = 40, classes: int = 3, size: int = 40) -> None:
    """out/<class>/NNN.png or .jpg (alternating): one subfolder per class."""
    from PIL import Image

    images, labels = pattern_images(per_class * classes, classes, size=size, seed=1)
    counts = [0] * classes
    for image, label in zip(images, labels):
        folder = os.path.join(out, f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        k = counts[label]
        counts[label] += 1
        suffix = "png" if k % 2 == 0 else "jpg"
        Image.fromarray(image.transpose(1, 2, 0)).save(os.path.join(folder, f"{k:04d}.{suffix}"))


WORDS = {
    "det": ["the", "a", "every", "no", "that"],
    "adj": ["small", "quiet", "green", "old", "bright", "heavy", "strange", "patient"],
    "noun": ["river", "engine", "garden", "teacher", "window", "market", "signal", "forest", "question", "harbour"],
    "verb": ["follows", "opens", "remembers", "carries", "watches", "answers", "builds", "crosses"],
    "adv": ["slowly", "again", "at night", "without a word", "before the rain", "in the morning"],
}


def sentence(rng: random.Random) -> str:
    def phrase() -> str:
        words = [rng.choice(WORDS["det"])]
        if rng.random() < 0.6:
            words.append(rng.choice(WORDS["adj"]))
        return " ".join(words + [rng.choice(WORDS["noun"])])

    text = f"{phrase()} {rng.choice(WORDS['verb'])} {phrase()}"
    if rng.random() < 0.5:
        text += f" {rng.choice(WORDS['adv'])}"
    end = rng.choice([".", ".", ".", "?", "!"])
    return text[0].upper() + text[1:] + end


def write_text(out: str, chars: int = 120_000, seed: int = 0) -> None:
    """Sentences from a small grammar, in paragraphs: about `chars` characters of UTF-8."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < chars:
        paragraph = " ".join(sentence(rng) for _ in range(rng.randint(2, 6))) + "\n\n"
        parts.append(paragraph)
        size += len(paragraph)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write("".join(parts))


def write_csv(out: str, rows: int = 600, seed: int = 0) -> None:
    """Columns: four numeric measurements, a colour (strings, noise), `species` (3 string classes, the
    classification target) and `price` (a noisy numeric function of the others, for regression)."""
    rng = np.random.RandomState(seed)
    species = rng.randint(0, 3, rows)
    centres = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    x = centres[species] + 0.8 * rng.randn(rows, 4)
    colours = np.array(["red", "green", "blue"])[rng.randint(0, 3, rows)]  # uninformative
    price = 3.0 * x[:, 2] - 2.0 * x[:, 1] + 0.5 * x[:, 0] * x[:, 3] + 0.3 * rng.randn(rows)
    names = np.array(["setosa", "versicolor", "virginica"])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width", "colour", "species", "price"])
        for i in range(rows):
            writer.writerow([*(f"{v:.2f}" for v in x[i]), colours[i], names[species[i]], f"{price[i]:.3f}"])


WRITERS = {"cifar10": write_cifar10, "images": write_image_folder, "char_lm": write_text, "csv": write_csv}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m objectives.tasks.samples", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(WRITERS))
    parser.add_argument("out", help="the folder (cifar10, images) or file (char_lm, csv) to write")
    args = parser.parse_args(argv)
    WRITERS[args.kind](args.out)
    print(f"wrote {args.kind} sample: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
