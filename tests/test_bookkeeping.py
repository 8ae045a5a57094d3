"""The bookkeeper: Optuna's side of the sweep in a forked child process (a thread as the fallback).

Each test drives a real child: answers and errors come back through the pipe, pruning decisions
overtake queued work, the child dies with its parent, and a sweep gives the same trials whether
its bookkeeping runs in a process or on a thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.exceptions import StorageInternalError

from sweeps.loop.bookkeeper_process import BookkeeperDied, ProcessBookkeeper, ThreadBookkeeper

REPO = Path(__file__).resolve().parents[1]


class Unpicklable(Exception):
    def __init__(self, lock):
        super().__init__("holds a lock")
        self.lock = lock


class Owner:
    """Stands in for the sweep loop: methods the bookkeeper runs by name."""

    def __init__(self):
        self.started_in_child = None
        self.gate = threading.Event()

    def start_bookkeeping(self, in_child: bool) -> None:
        self.started_in_child = in_child

    def stop_bookkeeping(self) -> None:
        pass

    def interrupt(self) -> None:
        self.gate.set()

    def wait_for_interrupt(self) -> bool:
        return self.gate.wait(10)

    def where(self) -> tuple[int, bool | None]:
        return os.getpid(), self.started_in_child

    def slow(self, seconds: float) -> str:
        time.sleep(seconds)
        return "slow"

    def decide(self, value: float) -> float:
        return 2 * value

    def fail(self) -> None:
        raise ValueError("the sampler is broken")

    def fail_unpicklable(self) -> None:
        raise Unpicklable(threading.Lock())

    def fail_with_a_cause(self) -> None:
        try:
            raise KeyError("the row went away")
        except KeyError as cause:
            raise StorageInternalError("An exception is raised during the commit.") from cause

    def exit_now(self) -> None:
        os._exit(3)


@pytest.mark.skipif(sys.platform != "linux", reason="the bookkeeper forks on Linux only")
def test_the_child_answers_in_order_and_sends_errors_back():
    book = ProcessBookkeeper(Owner())
    try:
        pid, in_child = book.submit("where").result(timeout=10)
        assert pid != os.getpid() and in_child is True
        with pytest.raises(ValueError, match="the sampler is broken"):
            book.submit("fail").result(timeout=10)
        with pytest.raises(RuntimeError, match="Unpicklable: holds a lock"):
            book.submit("fail_unpicklable").result(timeout=10)
        # pickling drops an exception's cause: it comes back named in the message (the trial's error)
        with pytest.raises(StorageInternalError, match="during the commit. .caused by KeyError: 'the row went away'"):
            book.submit("fail_with_a_cause").result(timeout=10)
        assert book.submit("decide", 1.5).result(timeout=10) == 3.0  # still serving after errors
    finally:
        book.shutdown()
    assert book.process.exitcode == 0


@pytest.mark.skipif(sys.platform != "linux", reason="the bookkeeper forks on Linux only")
def test_a_pruning_decision_overtakes_queued_sampling():
    """The decision comes back while the slow request ahead of it still runs: it did not wait in
    line. (How fast it comes back is a speed target: benchmarks/bookkeeper_latency.py prints it
    against an idle bookkeeper's.) The slow request takes 3 s so that a loaded machine cannot
    finish it before the decision's answer is read."""
    book = ProcessBookkeeper(Owner())
    try:
        slow = book.submit("slow", 3.0)
        queued = book.submit("where")
        assert book.submit("decide", 2.0).result(timeout=10) == 4.0
        assert not slow.done() and not queued.done(), "the decision waited behind the slow request"
        assert slow.result(timeout=10) == "slow" and queued.result(timeout=10)[0] != os.getpid()
    finally:
        book.shutdown()


@pytest.mark.skipif(sys.platform != "linux", reason="the bookkeeper forks on Linux only")
def test_an_interrupt_reaches_a_busy_child_at_once():
    """On Ctrl-C or SIGTERM, an ask that waits for other workers' trials must give up at once."""
    book = ProcessBookkeeper(Owner())
    try:
        waiting = book.submit("wait_for_interrupt")
        time.sleep(0.2)
        started = time.perf_counter()
        book.interrupt()
        # True: the gate opened by the interrupt, not the child's own 10-s timeout; "at once" is
        # a generous 5 s (it takes milliseconds) so that a loaded machine cannot fail it
        assert waiting.result(timeout=10) is True and time.perf_counter() - started < 5
    finally:
        book.shutdown()


@pytest.mark.skipif(sys.platform != "linux", reason="the bookkeeper forks on Linux only")
def test_a_dead_child_fails_what_waits_on_it_instead_of_hanging():
    book = ProcessBookkeeper(Owner())
    try:
        waiting = book.submit("exit_now")
        with pytest.raises(BookkeeperDied):
            waiting.result(timeout=10)
        book.process.join(timeout=10)
        with pytest.raises(BookkeeperDied):
            book.submit("where").result(timeout=10)
    finally:
        book.shutdown()


@pytest.mark.skipif(sys.platform != "linux", reason="the bookkeeper forks on Linux only")
def test_the_child_ignores_ctrl_c_sent_to_the_process_group():
    """Ctrl-C reaches every process of the terminal's group; only the parent decides what an
    interrupted sweep closes, so the child must outlive the signal."""
    book = ProcessBookkeeper(Owner())
    try:
        book.submit("where").result(timeout=10)  # the child is serving: its handlers are set
        os.kill(book.process.pid, signal.SIGINT)
        os.kill(book.process.pid, signal.SIGTERM)
        assert book.submit("decide", 1.0).result(timeout=10) == 2.0
    finally:
        book.shutdown()


def test_the_thread_fallback_runs_the_same_methods():
    book = ThreadBookkeeper(Owner())
    try:
        assert book.submit("where").result(timeout=10) == (os.getpid(), False)
        with pytest.raises(ValueError):
            book.submit("fail").result(timeout=10)
    finally:
        book.shutdown()


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def sweep_file(folder: Path, n_trials: int, storage: str) -> Path:
    data = {
        "study": {"name": "book", "metric": "val_mse", "direction": "minimize", "n_trials": n_trials,
                  "seed": 3, "storage": storage},
        "sampler": {"name": "tpe", "n_startup_trials": 3},
        "pruner": {"name": "hyperband"},
        "objective": {"task": "regression", "device": "cpu", "options": {"dim": 8, "n_train": 256, "n_val": 64}},
        "budget": {"unit": "updates", "per_trial": 40, "eval_every": 5},
        "search": {"batch_size": [8, 16, 32, 64], "base_lr": {"low": 1e-3, "high": 0.3, "log": True}},
    }
    path = folder / f"{storage.rsplit('/', 1)[-1]}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_the_bookkeeper_dies_with_a_killed_sweep(tmp_path):
    """A sweep killed with SIGKILL must not leave its bookkeeper behind: the orphan would keep
    the trial's heartbeat alive, and no other worker would ever retry it."""
    path = sweep_file(tmp_path, 10_000, "sqlite:///killed.db")
    sweep = subprocess.Popen([sys.executable, "-m", "sweeps.run", str(path), "--quiet"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (children := children_of(sweep.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert children, "the sweep started no bookkeeping process"
    finally:
        sweep.kill()
        sweep.wait()
    deadline = time.monotonic() + 10
    while any(alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(c) for c in children), "the bookkeeper outlived its sweep"


def test_process_and_thread_bookkeeping_give_the_same_study(tmp_path):
    runs = {}
    for mode in ("process", "thread"):
        path = sweep_file(tmp_path, 8, f"sqlite:///{mode}.db")
        done = subprocess.run([sys.executable, "-m", "sweeps.run", str(path), "--quiet"], cwd=REPO,
                              env={**os.environ, "SWEEPS_BOOKKEEPING": mode}, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        study = optuna.load_study(study_name="book", storage=f"sqlite:///{tmp_path}/{mode}.db")
        runs[mode] = [(t.number, t.state, t.params, t.value, t.user_attrs["updates"]) for t in study.trials]
    assert len(runs["process"]) == 8
    assert runs["process"] == runs["thread"]


def test_training_leaves_the_bookkeeper_a_core_only_when_it_would_take_them_all():
    import torch

    from sweeps.loop.runner import a_core_for_bookkeeping

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(cores)
        with a_core_for_bookkeeping():
            assert torch.get_num_threads() == max(1, cores - 1)
        assert torch.get_num_threads() == cores
        torch.set_num_threads(1)  # a user's own limit (OMP_NUM_THREADS=1, or --workers) stays
        with a_core_for_bookkeeping():
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
