"""The built-in tasks that read local files (cifar10, char_lm, csv): each format read, each
malformed file rejected in one line with exit 2 and no store, augmentation, short real sweeps.

The usage errors run `sweeps.run.main` in this process (tests.conftest.in_process: its exit code
and stderr, warnings included); one malformed file also runs as `python -m sweeps.run`."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml

from objectives.task import TrialSettings
from objectives.tasks import samples
from objectives.tasks.char_lm import char_blocks, char_lm
from objectives.tasks.cifar10 import PAD, cifar10, cifar_arrays, random_crop_flip
from objectives.tasks.csv_table import csv_table, table_tensors
from objectives.tasks.datafiles import DataFileError
from sweeps.config.study_file import parse_config
from sweeps.run import main
from tests.conftest import in_process

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_caches():
    """The readers cache per process; a test that rewrites a file must read it again."""
    for reader in (cifar_arrays, char_blocks, table_tensors):
        reader.cache_clear()
    yield


def settings(base: Path, **options) -> TrialSettings:
    return TrialSettings(batch_size=8, lr=0.1, seed=0, device=torch.device("cpu"), options=options,
                         base_dir=str(base))


def write_cifar_batch(path: Path, data, labels, protocol: int = 2) -> None:
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data}, f, protocol=protocol)


def py2_str(raw: bytes) -> bytes:
    """A Python 2 str in a pickle (SHORT_BINSTRING / BINSTRING): Python 3 never writes these."""
    return (b"U" + bytes([len(raw)]) + raw) if len(raw) < 256 else (b"T" + struct.pack("<i", len(raw)) + raw)


def py2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """The opcodes Python 2's cPickle wrote for the batches in cifar-10-python.tar.gz: a dict of
    str keys, a numpy uint8 array rebuilt by numpy.core.multiarray._reconstruct, a list of ints."""
    out = b"\x80\x02}(" + py2_str(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + py2_str(b"b") + b"\x87R"
    out += b"(K\x01M" + struct.pack("<H", len(data)) + b"M" + struct.pack("<H", 3072) + b"\x86"
    out += b"cnumpy\ndtype\n" + py2_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + py2_str(b"|")
    out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + py2_str(data.tobytes()) + b"tb"
    out += py2_str(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    return out


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    return path


# --- cifar10: the python batch folder ---


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_batch_folder_is_read_as_written(tmp_path, protocol):
    rng = np.random.RandomState(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written = []
    for name in ["data_batch_1", "data_batch_2", "test_batch"]:
        data = rng.randint(0, 256, (7, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.randint(0, 10, 7)]
        write_cifar_batch(folder / name, data, labels, protocol)
        written.append((data, labels))
    task = cifar10(settings(tmp_path, path="cifar-10-batches-py", width=4, blocks=1))
    x, y = task.train
    assert x.dtype == torch.uint8 and x.shape == (14, 3, 32, 32)
    expected = np.concatenate([written[0][0], written[1][0]]).reshape(14, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(expected))  # row-major: 1024 red, 1024 green, 1024 blue
    assert y.tolist() == written[0][1] + written[1][1]
    assert torch.equal(task.val[0], torch.from_numpy(written[2][0].reshape(7, 3, 32, 32)))
    assert task.val[1].tolist() == written[2][1]
    assert task.model(x[:2]).shape == (2, 10)
    capped = cifar10(settings(tmp_path, path=str(folder), width=4, blocks=1, max_train=5, max_val=3))
    assert len(capped.train[0]) == 5 and len(capped.val[0]) == 3


def test_cifar_batches_pickled_by_python_2_are_read(tmp_path):
    rng = np.random.RandomState(3)
    (tmp_path / "c").mkdir()
    train = rng.randint(0, 256, (6, 3072)).astype(np.uint8)
    val = rng.randint(0, 256, (4, 3072)).astype(np.uint8)
    (tmp_path / "c" / "data_batch_1").write_bytes(py2_cifar_batch(train, [9, 0, 1, 2, 3, 4]))
    (tmp_path / "c" / "test_batch").write_bytes(py2_cifar_batch(val, [5, 6, 7, 8]))
    task = cifar10(settings(tmp_path, path="c", width=4, blocks=1))
    assert torch.equal(task.train[0], torch.from_numpy(train.reshape(6, 3, 32, 32)))
    assert task.train[1].tolist() == [9, 0, 1, 2, 3, 4] and task.val[1].tolist() == [5, 6, 7, 8]
    assert torch.equal(task.val[0], torch.from_numpy(val.reshape(4, 3, 32, 32)))


def test_cifar_normalisation_uses_the_training_set(tmp_path):
    samples.write_cifar10(str(tmp_path / "c"), per_batch=20)
    task = cifar10(settings(tmp_path, path="c", width=4, blocks=1))
    normalised = task.model[0](task.train[0])
    assert normalised.dtype == torch.float32
    assert abs(normalised.mean().item()) < 1e-3
    assert normalised.transpose(0, 1).reshape(3, -1).std(dim=1).sub(1).abs().max().item() < 1e-2


def test_cifar_pickle_may_not_run_code(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    write_cifar_batch(folder / "test_batch", np.zeros((1, 3072), np.uint8), [0])
    with pytest.raises(DataFileError, match="refusing to load"):
        cifar10(settings(tmp_path, path="evil"))
    assert not marker.exists()


# --- cifar10: image folders of PNG and JPEG files ---


def test_image_folder_of_pngs_and_jpegs(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(1)
    pngs = {}
    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(10):
            image = rng.randint(0, 256, (32, 32, 3)).astype(np.uint8)
            suffix = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(image).save(tmp_path / "imgs" / name / f"{i}.{suffix}")
            if suffix == "png":
                pngs[image.tobytes()] = label
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("not an image, not a class")
    task = cifar10(settings(tmp_path, path="imgs", width=4, blocks=1, val_fraction=0.2))
    x, y = task.train
    assert x.shape == (16, 3, 32, 32) and len(task.val[0]) == 4
    assert sorted(y.tolist()) == [0] * 8 + [1] * 8  # 20% of each class held out
    assert sorted(task.val[1].tolist()) == [0, 0, 1, 1]
    assert task.model(x[:2]).shape == (2, 2)
    every = torch.cat([x, task.val[0]]).permute(0, 2, 3, 1).contiguous().numpy()
    labels = torch.cat([y, task.val[1]]).tolist()
    decoded = {img.tobytes(): lab for img, lab in zip(every, labels)}
    assert all(decoded.get(raw) == label for raw, label in pngs.items())  # PNG is lossless
    again = cifar10(settings(tmp_path, path="imgs", width=4, blocks=1, val_fraction=0.2))
    assert torch.equal(again.val[0], task.val[0])  # the same split for every trial


def test_image_folder_with_train_and_val_resizes(tmp_path):
    from PIL import Image

    for split, count in (("train", 3), ("val", 2)):
        for name in ("a", "b", "c"):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (48, 40), (10, 200, 30)).save(tmp_path / "tree" / split / name / f"{i}.jpeg")
    task = cifar10(settings(tmp_path, path="tree", width=4, blocks=1, image_size=24))
    assert task.train[0].shape == (9, 3, 24, 24) and task.val[0].shape == (6, 3, 24, 24)
    assert sorted(task.val[1].tolist()) == [0, 0, 1, 1, 2, 2]
    assert abs(int(task.train[0][0, 1, 12, 12]) - 200) <= 3  # green survives JPEG and the resize


# --- cifar10: augmentation ---


def test_crop_and_flip_shapes_determinism_and_content():
    n = 64
    x = torch.arange(n * 3 * 32 * 32, dtype=torch.int64).view(n, 3, 32, 32).remainder(251).to(torch.uint8)
    y = torch.arange(n)
    out, labels = random_crop_flip((x, y), torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == torch.uint8 and torch.equal(labels, y)
    same, _ = random_crop_flip((x, y), torch.Generator().manual_seed(5))
    assert torch.equal(out, same)
    other, _ = random_crop_flip((x, y), torch.Generator().manual_seed(6))
    assert not torch.equal(out, other)
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    found = []
    for i in range(n):
        matches = [(dy, dx, flip) for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1) for flip in (False, True)
                   if torch.equal(out[i], (lambda w: w.flip(2) if flip else w)(padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert matches, f"example {i} is not a crop of its padded image"
        found.append(matches[0])
    assert {f[2] for f in found} == {False, True}  # both flipped and unflipped
    assert len({f[:2] for f in found}) > 10  # many offsets
    assert any(f[:2] != (PAD, PAD) for f in found)


def test_cifar_task_augments_with_crop_and_flip(tmp_path):
    samples.write_cifar10(str(tmp_path / "c"), per_batch=10)
    task = cifar10(settings(tmp_path, path="c", width=4, blocks=1))
    assert task.augment is random_crop_flip


# --- char_lm: a text file ---


def test_text_file_blocks_and_held_out_tail(tmp_path):
    text = "".join(chr(ord("a") + (i * 7) % 13) for i in range(1000)) + "é\n"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    task = char_lm(settings(tmp_path, path="t.txt", block_size=16, val_fraction=0.1, n_layer=1, n_head=2,
                            n_embd=8))
    vocab = sorted(set(text))
    decode = lambda ids: "".join(vocab[i] for i in ids.tolist())  # noqa: E731
    x, y = task.train
    assert x.shape[1] == 16 and torch.equal(x[:, 1:], y[:, :-1])
    assert decode(x[0]) == text[:16] and decode(y[0]) == text[1:17]
    assert decode(x[1]) == text[16:32]  # stride = block_size by default
    split = len(text) - int(len(text) * 0.1)
    assert decode(task.val[0][0]) == text[split:split + 16]
    assert len(task.val[0]) == (len(text) - split - 1) // 16  # non-overlapping blocks of the tail
    assert decode(task.val[0][-1]) == text[split + 16 * (len(task.val[0]) - 1):][:16]
    assert len(x) == (split - 17) // 16 + 1  # training windows stop before the tail
    assert task.tokens_per_example == 16
    logits = task.model(x[:3])
    assert logits.shape == (3, 16, len(vocab))
    assert abs(task.loss(logits, y[:3]).item() - math.log(len(vocab))) < 0.5  # near uniform at init
    overlapping = char_lm(settings(tmp_path, path="t.txt", block_size=16, stride=4, n_layer=1, n_head=2, n_embd=8))
    assert decode(overlapping.train[0][1]) == text[4:20]


def test_char_gpt_is_causal(tmp_path):
    (tmp_path / "t.txt").write_text("abcdefgh" * 50)
    task = char_lm(settings(tmp_path, path="t.txt", block_size=8, n_layer=2, n_head=2, n_embd=16))
    task.model.eval()
    x = task.train[0][:1].clone()
    before = task.model(x)
    x[0, -1] = (x[0, -1] + 1) % 8
    after = task.model(x)
    assert torch.allclose(before[0, :-1], after[0, :-1], atol=1e-6)
    assert not torch.allclose(before[0, -1], after[0, -1])


# --- csv: classification, regression, the guess and its override ---


def test_csv_string_target_is_classification(tmp_path):
    rng = np.random.RandomState(0)
    rows = [[round(rng.randn(), 3), rng.choice(["red", "blue"]), rng.choice(["yes", "no", "maybe"])]
            for _ in range(50)]
    write_csv(tmp_path / "t.csv", ["a", "colour", "answer"], rows)
    task = csv_table(settings(tmp_path, path="t.csv", target="answer", val_fraction=0.2))
    x, y = task.train
    assert y.dtype == torch.int64 and x.shape == (40, 3)  # a, colour one-hot (2)
    assert len(task.val[0]) == 10
    labels = {"maybe": 0, "no": 1, "yes": 2}
    assert sorted(torch.cat([y, task.val[1]]).tolist()) == sorted(labels[r[2]] for r in rows)
    assert abs(x[:, 0].mean().item()) < 1e-5 and abs(x[:, 0].std(unbiased=False).item() - 1) < 1e-4
    assert set(x[:, 1:].flatten().tolist()) == {0.0, 1.0} and torch.all(x[:, 1:].sum(1) == 1)
    assert task.model(x).shape == (40, 3)
    assert task.metric(torch.eye(3)[y], y).item() == 1.0  # accuracy


def test_csv_integer_target_few_values_is_classification_many_is_regression(tmp_path):
    rng = np.random.RandomState(0)
    rows = [[round(rng.randn(), 3), int(rng.randint(0, 4)), int(rng.randint(0, 500))] for _ in range(200)]
    write_csv(tmp_path / "t.csv", ["a", "grade", "count"], rows)
    task = csv_table(settings(tmp_path, path="t.csv", target="grade", features=["a"]))
    assert task.train[1].dtype == torch.int64 and task.model(task.train[0]).shape[1] == 4
    task = csv_table(settings(tmp_path, path="t.csv", target="count", features=["a"]))
    assert task.train[1].dtype == torch.float32 and task.train[1].shape[1] == 1
    # 4 distinct of 60 rows is not below 5%: regression
    write_csv(tmp_path / "few.csv", ["a", "grade"], [r[:2] for r in rows[:60]])
    assert csv_table(settings(tmp_path, path="few.csv", target="grade")).train[1].dtype == torch.float32


def test_csv_regression_metric_is_mse_in_the_targets_units(tmp_path):
    rng = np.random.RandomState(0)
    rows = [[round(v, 3), round(100 + 50 * v, 3)] for v in rng.randn(100)]
    write_csv(tmp_path / "t.csv", ["a", "price"], rows)
    task = csv_table(settings(tmp_path, path="t.csv", target="price", hidden=[8, 8]))
    _, y = task.train
    assert task.metric(y + 2, y).item() == pytest.approx(4.0)
    assert task.loss(y + 2, y).item() == pytest.approx(4.0 / y.std(unbiased=False).item() ** 2, rel=1e-4)
    with torch.no_grad():
        pred = task.model(task.train[0])
    assert abs(pred.mean().item() - 100) < 30  # the head puts predictions back in the target's units
    assert len([m for m in task.model if isinstance(m, torch.nn.Linear)]) == 3


def test_csv_kind_overrides_the_guess(tmp_path):
    rows = [[i % 7, i % 3] for i in range(300)]
    write_csv(tmp_path / "t.csv", ["a", "label"], rows)
    assert csv_table(settings(tmp_path, path="t.csv", target="label")).train[1].dtype == torch.int64
    forced = csv_table(settings(tmp_path, path="t.csv", target="label", kind="regression"))
    assert forced.train[1].dtype == torch.float32
    rows = [[i % 7, 0.5 * (i % 2)] for i in range(300)]
    write_csv(tmp_path / "f.csv", ["a", "score"], rows)
    assert csv_table(settings(tmp_path, path="f.csv", target="score")).train[1].dtype == torch.float32
    forced = csv_table(settings(tmp_path, path="f.csv", target="score", kind="classification"))
    assert forced.train[1].dtype == torch.int64 and forced.model(forced.train[0]).shape[1] == 2


def test_csv_split_is_fixed_and_missing_numbers_take_the_training_mean(tmp_path):
    rows = [[("" if i == 3 else i), i % 2] for i in range(40)]
    write_csv(tmp_path / "t.csv", ["a", "label"], rows)
    one = csv_table(settings(tmp_path, path="t.csv", target="label", kind="classification"))
    table_tensors.cache_clear()
    two = csv_table(settings(tmp_path, path="t.csv", target="label", kind="classification"))
    assert torch.equal(one.val[0], two.val[0]) and torch.isfinite(one.train[0]).all()
    other = csv_table(settings(tmp_path, path="t.csv", target="label", kind="classification", split_seed=1))
    assert not torch.equal(one.val[0], other.val[0])


# --- malformed files: one line, exit 2, no store, through the real command ---


def study_file(folder: Path, task: str, options: dict, metric="val_accuracy", direction="maximize",
               budget: dict | None = None) -> Path:
    study = {
        "study": {"name": "files", "storage": "sqlite:///files.db", "metric": metric, "direction": direction,
                  "n_trials": 2, "seed": 0},
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "objective": {"task": task, "optimizer": "adam", "options": options},
        "budget": budget or {"unit": "updates", "per_trial": 4, "eval_every": 2},
        "search": {"batch_size": [4, 8], "base_lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def break_cifar_not_a_pickle(d: Path):
    samples.write_cifar10(str(d / "c"), per_batch=4)
    (d / "c" / "data_batch_2").write_bytes(b"this is not a pickle")
    return "cifar10", {"path": "c"}, d / "c" / "data_batch_2", "CIFAR-10 python batch"


def break_cifar_wrong_shape(d: Path):
    samples.write_cifar10(str(d / "c"), per_batch=4)
    write_cifar_batch(d / "c" / "data_batch_3", np.zeros((4, 1024), np.uint8), [0, 1, 2, 3])
    return "cifar10", {"path": "c"}, d / "c" / "data_batch_3", "uint8 [N, 3072]"


def break_cifar_no_labels(d: Path):
    samples.write_cifar10(str(d / "c"), per_batch=4)
    with open(d / "c" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8)}, f)
    return "cifar10", {"path": "c"}, d / "c" / "test_batch", "b'labels'"


def break_cifar_no_test_batch(d: Path):
    samples.write_cifar10(str(d / "c"), per_batch=4)
    (d / "c" / "test_batch").unlink()
    return "cifar10", {"path": "c"}, d / "c" / "test_batch", "missing"


def break_image_not_an_image(d: Path):
    samples.write_image_folder(str(d / "imgs"), per_class=4, classes=2)
    (d / "imgs" / "class_1" / "0001.png").write_bytes(b"\x89PNG broken")
    return "cifar10", {"path": "imgs"}, d / "imgs" / "class_1" / "0001.png", "PNG or JPEG"


def break_image_folder_empty(d: Path):
    (d / "imgs").mkdir()
    return "cifar10", {"path": "imgs"}, d / "imgs", "subfolder"


def break_text_not_utf8(d: Path):
    (d / "t.txt").write_bytes(b"hello " * 100 + b"\xff\xfe" + b"world " * 100)
    return "char_lm", {"path": "t.txt", "block_size": 8}, d / "t.txt", "UTF-8"


def break_text_too_short(d: Path):
    (d / "t.txt").write_text("too short")
    return "char_lm", {"path": "t.txt", "block_size": 8}, d / "t.txt", "at least 9 characters"


def break_text_missing(d: Path):
    return "char_lm", {"path": "nowhere.txt"}, d / "nowhere.txt", "no such file"


def break_csv_ragged(d: Path):
    (d / "t.csv").write_text("a,b,label\n1,2,x\n3,4\n5,6,y\n")
    return "csv", {"path": "t.csv", "target": "label"}, d / "t.csv", "got 2 on line 3"


def break_csv_empty_target(d: Path):
    (d / "t.csv").write_text("a,label\n1,x\n\n2,\n3,y\n")
    return "csv", {"path": "t.csv", "target": "label"}, d / "t.csv", "line 4 is empty"


def break_csv_no_target(d: Path):
    (d / "t.csv").write_text("a,b,label\n1,2,x\n3,4,y\n5,6,y\n")
    return "csv", {"path": "t.csv", "target": "species"}, d / "t.csv", "'species'"


def break_csv_strings_for_regression(d: Path):
    (d / "t.csv").write_text("a,label\n" + "".join(f"{i},{'xy'[i % 2]}\n" for i in range(20)))
    return "csv", {"path": "t.csv", "target": "label", "kind": "regression"}, d / "t.csv", "numbers"


BREAKAGES = [break_cifar_not_a_pickle, break_cifar_wrong_shape, break_cifar_no_labels, break_cifar_no_test_batch,
             break_image_not_an_image, break_image_folder_empty, break_text_not_utf8, break_text_too_short,
             break_text_missing, break_csv_ragged, break_csv_empty_target, break_csv_no_target,
             break_csv_strings_for_regression]


def subprocess_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m sweeps.run ARGS` in a fresh interpreter, from `cwd`, $SWEEPS_STORAGE unset."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SWEEPS_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "sweeps.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def sweeps_run(monkeypatch, capsys):
    """`sweeps run ARGS` in this process, from `cwd`, $SWEEPS_STORAGE unset: its exit code and output."""
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)

    def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        return in_process(main, args, capsys)

    return run


def error_lines_of_a_usage_error(done: subprocess.CompletedProcess) -> list[str]:
    """The run must have exited 2. Its non-empty stderr lines."""
    assert done.returncode == 2, done.stderr
    return [line for line in done.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__[len("break_"):])
def test_malformed_file_exits_2_with_one_line_naming_it(tmp_path, breakage, sweeps_run):
    task, options, bad_file, expected = breakage(tmp_path)
    study = study_file(tmp_path, task, options)
    lines = error_lines_of_a_usage_error(sweeps_run([str(study)], tmp_path))
    assert len(lines) == 1, lines
    assert str(bad_file) in lines[0] and expected in lines[0], lines[0]
    assert list(tmp_path.glob("*.db*")) == []


# --- short real sweeps on each task's sample data, and the examples' dry runs ---


def tiny_sweep(folder: Path, task: str, options: dict, metric: str, direction: str,
               budget: dict | None = None) -> list[optuna.trial.FrozenTrial]:
    study = study_file(folder, task, options, metric, direction, budget)
    assert main([str(study), "--quiet"]) == 0
    return optuna.load_study(study_name="files", storage=f"sqlite:///{folder / 'files.db'}").trials


def test_sweep_on_cifar_sample(tmp_path):
    samples.write_cifar10(str(tmp_path / "c"), per_batch=16)
    trials = tiny_sweep(tmp_path, "cifar10", {"path": "c", "width": 4, "blocks": 1}, "val_accuracy", "maximize")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(0.0 <= t.value <= 1.0 for t in trials)


def test_sweep_on_image_folder_sample(tmp_path):
    samples.write_image_folder(str(tmp_path / "imgs"), per_class=6, classes=2)
    trials = tiny_sweep(tmp_path, "cifar10", {"path": "imgs", "width": 4, "blocks": 1}, "val_accuracy", "maximize")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_sweep_on_text_sample(tmp_path):
    samples.write_text(str(tmp_path / "t.txt"), chars=6000)
    options = {"path": "t.txt", "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}
    trials = tiny_sweep(tmp_path, "char_lm", options, "val_loss", "minimize")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    vocab = len(set((tmp_path / "t.txt").read_text()))
    assert all(0 < t.value < math.log(vocab) + 0.5 for t in trials)  # a cross-entropy in nats


def test_tokens_budget_counts_block_size_tokens_per_example(tmp_path):
    samples.write_text(str(tmp_path / "t.txt"), chars=6000)
    options = {"path": "t.txt", "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}
    budget = {"unit": "tokens", "per_trial": 640, "eval_every": 320}  # 40 examples of 16 tokens
    trials = tiny_sweep(tmp_path, "char_lm", options, "val_loss", "minimize", budget)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [sorted(t.intermediate_values) for t in trials] == [[320, 640]] * 2
    assert [t.user_attrs["examples_seen"] for t in trials] == [40, 40]  # 640 tokens / 16 per example
    assert [t.user_attrs["updates"] for t in trials] == [40 // t.params["batch_size"] for t in trials]


@pytest.mark.parametrize("target,metric,direction", [("species", "val_accuracy", "maximize"),
                                                     ("price", "val_mse", "minimize")])
def test_sweep_on_csv_sample(tmp_path, target, metric, direction):
    samples.write_csv(str(tmp_path / "t.csv"), rows=120)
    options = {"path": "t.csv", "target": target, "hidden": 8}
    if target == "species":
        options["features"] = ["sepal_length", "sepal_width", "petal_length", "petal_width", "colour"]
    trials = tiny_sweep(tmp_path, "csv", options, metric, direction)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    if target == "species":
        assert all(0.0 <= t.value <= 1.0 for t in trials)
    else:
        assert all(t.value > 0 for t in trials)


@pytest.mark.parametrize("example,kind,sample", [("cifar10", "cifar10", "data/cifar-10-batches-py"),
                                                 ("char_lm", "char_lm", "data/text.txt"),
                                                 ("csv", "csv", "data/table.csv")])
def test_examples_build_on_the_samples_module_output(tmp_path, monkeypatch, capsys, example, kind, sample):
    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)
    shutil.copy(REPO / "examples" / f"{example}.yaml", tmp_path)
    loaded = yaml.safe_load((tmp_path / f"{example}.yaml").read_text())
    assert loaded["objective"]["options"]["path"] == sample  # the path the guide's command writes:
    guide = (REPO / "docs/guide/your_own_task.md").read_text()
    commands = (f"python -m objectives.tasks.samples {kind} examples/{sample}\n"
                f"python -m sweeps.run examples/{example}.yaml")
    assert commands in guide
    assert main([str(tmp_path / f"{example}.yaml"), "--dry-run"]) == 2  # no data yet: the error offers the sample
    err = capsys.readouterr().err
    offered = f"python -m objectives.tasks.samples {kind} {tmp_path / sample})"
    assert len(err.strip().splitlines()) == 1 and err.rstrip().endswith(offered)
    assert samples.main(offered.removesuffix(")").split()[3:]) == 0
    config = parse_config(loaded, tmp_path)
    assert config.objective.task == example
    assert main([str(tmp_path / f"{example}.yaml"), "--dry-run"]) == 0
    assert "batch_size" in capsys.readouterr().out
    assert list(tmp_path.glob("*.db")) == []


@pytest.mark.parametrize("kind,direction", [("regression", "maximize"), ("classification", "minimize")])
def test_a_csv_study_whose_direction_contradicts_the_metric_exits_2(tmp_path, kind, direction, sweeps_run):
    rng = np.random.RandomState(0)
    rows = [[round(rng.randn(), 3), rng.choice(["red", "blue"])] for _ in range(40)]
    write_csv(tmp_path / "t.csv", ["a", "colour"], rows)
    target = "colour" if kind == "classification" else "a"
    options = {"path": "t.csv", "target": target, "kind": kind}
    study = study_file(tmp_path, "csv", options, metric="whatever", direction=direction)
    lines = error_lines_of_a_usage_error(sweeps_run([str(study)], tmp_path))
    wanted = "study.direction: maximize" if kind == "classification" else "study.direction: minimize"
    assert len(lines) == 1 and wanted in lines[0], lines
    assert list(tmp_path.glob("*.db*")) == []


METRIC_CASES = [
    ("csv", {"path": "t.csv", "target": "colour"}, "val_mse", "maximize", "val_accuracy"),  # classification
    ("csv", {"path": "t.csv", "target": "a", "kind": "regression"}, "val_accuracy", "minimize", "val_mse"),
    ("regression", {"dim": 4, "n_train": 64, "n_val": 16}, "val_accuracy", "minimize", "val_mse"),
    ("digits_mlp", {}, "val_loss", "maximize", "val_accuracy"),
    ("examples.custom_task:two_moons", {"n": 100}, "val_mse", "maximize", "val_accuracy"),  # a user task
]


def write_metric_case_csv(folder: Path) -> None:
    rng = np.random.RandomState(0)
    write_csv(folder / "t.csv", ["a", "colour"], [[round(rng.randn(), 3), rng.choice(["red", "blue"])]
                                                  for _ in range(40)])


@pytest.mark.parametrize("task,options,metric,direction,produced", METRIC_CASES)
def test_a_metric_the_task_does_not_produce_exits_2_before_training(tmp_path, task, options, metric, direction,
                                                                     produced, sweeps_run):
    """The task's metric is labelled with study.metric everywhere: a name that contradicts it is a
    usage error at --dry-run time, naming the metric the task does produce."""
    write_metric_case_csv(tmp_path)
    study = study_file(tmp_path, task, options, metric=metric, direction=direction)
    done = sweeps_run([str(study), "--dry-run"], tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "study.metric" in lines[0] and metric in lines[0] and f"study.metric: {produced}" in lines[0], lines[0]
    fixed = study_file(tmp_path, task, options, metric=produced, direction=direction)
    done = sweeps_run([str(fixed), "--dry-run"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.glob("*.db*")) == []


def test_the_real_command_exits_2_with_one_line_naming_a_malformed_file(tmp_path):
    """`python -m sweeps.run` in a fresh interpreter: a malformed file ends in exit 2, one stderr line,
    and no store (the cases above run in process)."""
    task, options, bad_file, expected = break_csv_ragged(tmp_path)
    lines = error_lines_of_a_usage_error(subprocess_run([str(study_file(tmp_path, task, options))], tmp_path))
    assert len(lines) == 1 and str(bad_file) in lines[0] and expected in lines[0], lines
    assert list(tmp_path.glob("*.db*")) == []
