"""What `sweeps run` shows while it runs: the live line on a terminal, plain lines in a log,
--log-file with each failure's full traceback, and the wait for a dead worker's trials."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from objectives.training.budget import Budget
from storage.optuna_private import study_storage, trial_id_of
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.loop.heartbeat import stale_wait_text
from sweeps.loop.progress import Progress, StudyState
from sweeps.loop.runner import open_study, run_sweep
from sweeps.run import main
from tests.conftest import TINY, merged

REPO = Path(__file__).resolve().parents[1]


def sweeps_run(folder: Path, study: dict, *args: str) -> list[str]:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return [sys.executable, "-m", "sweeps.console", "run", str(path), *args]


def environment() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SWEEPS_STORAGE", None)
    return env


def run_in_terminal(command: list[str], cwd: Path, timeout: float = 120) -> tuple[int, str]:
    """Run under a pseudo-terminal 200 columns wide; everything it wrote, as the terminal got it."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    proc = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, cwd=cwd, env=environment())
    os.close(follower)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        os.close(leader)
        code = proc.wait(timeout=30)
    return code, out.decode(errors="replace")


def test_a_terminal_shows_the_running_trial_before_the_first_trial_ends(tmp_path):
    """One trial of 2 s: the live line shows it (number, batch, LR, % of its budget) while the
    study still has 0 of 1 done, redrawn in place, and the study's counts once it is done."""
    study = merged(TINY, {"study": {"n_trials": 1}, "budget": {"unit": "seconds", "per_trial": 2, "eval_every": 0.5},
                          "search": {"batch_size": [16], "base_lr": [0.05]}, "sampler": {"name": "grid"}})
    code, screen = run_in_terminal(sweeps_run(tmp_path, study), tmp_path)
    assert code == 0, screen
    redraws = screen.split("\r\x1b[K")
    running = [r for r in redraws if r.startswith("trial 0 (batch 16, lr 0.05)") and "0/1 done" in r]
    assert running, screen
    assert any("%, val_mse " in r for r in running), running  # its last evaluation, as it trains
    done = next(i for i, r in enumerate(redraws) if r.startswith("1/1 done: 1 complete"))
    assert redraws.index(running[0]) < done
    assert "ETA" in redraws[done]



def test_a_terminal_shows_a_fused_group_by_its_first_member_and_its_size(tmp_path):
    """Two trials fused as one group of 2 for a few seconds: the live line shows the first one's
    number and point and the group's size (`+1 fused`), and the study's counts once both are done."""
    study = merged(TINY, {"study": {"n_trials": 2}, "objective": {"fuse": 2},
                          "budget": {"unit": "updates", "per_trial": 6000, "eval_every": 1000},
                          "search": {"batch_size": [16], "base_lr": {"low": 0.01, "high": 0.1, "log": True}}})
    code, screen = run_in_terminal(sweeps_run(tmp_path, study), tmp_path)
    assert code == 0, screen
    redraws = screen.split("\r\x1b[K")
    running = [r for r in redraws if re.match(r"trial 0 \(batch 16, lr [0-9.]+\) \+1 fused \d+%", r)]
    assert running and all("0/2 done" in r for r in running), screen  # shown while it trains, not after
    assert any(r.startswith("2/2 done: 2 complete") and "(100%)" in r for r in redraws), screen

@pytest.fixture(scope="module")
def failing_run(tmp_path_factory):
    """A two-point grid whose batch-64 point cannot build its task, run with stderr to a pipe."""
    folder = tmp_path_factory.mktemp("failing")
    study = merged(TINY, {"study": {"n_trials": 2},
                          "objective": {"task": "tests.tasks_for_tests:crash_on_batch", "options": {}},
                          "sampler": {"name": "grid"}, "search": {"batch_size": [16, 64], "base_lr": [0.05]}})
    log = folder / "sweep.log"
    done = subprocess.run(sweeps_run(folder, study, "--log-file", str(log)), cwd=folder, env=environment(),
                          capture_output=True, text=True, timeout=300)
    return done, log


def test_a_log_gets_one_plain_line_per_finished_trial(failing_run):
    done, _ = failing_run
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    lines = done.stderr.splitlines()
    finished = [line for line in lines if " | 0/2 done" in line or " | 1/2 done" in line]
    assert len(finished) == 2, done.stderr
    assert sum(line.startswith("trial ") and " failed (batch 64, " in line for line in finished) == 1
    assert sum(line.startswith("trial ") and " complete: val_mse " in line and "(batch 16, lr 0.05)" in line
               for line in finished) == 1


def test_log_file_keeps_the_traceback_and_the_terminal_shows_it_once_short(failing_run):
    done, log = failing_run
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in crash_on_batch" in text
    assert "RuntimeError: shard for batch 64 is corrupt" in text
    assert " complete: val_mse " in text  # the log file also has the line per finished trial
    assert "Traceback" not in done.stderr
    short = [line for line in done.stderr.splitlines() if "shard for batch 64 is corrupt" in line]
    assert len(short) == 1, done.stderr
    assert "failed: RuntimeError: shard for batch 64 is corrupt (at " in short[0]
    assert "tasks_for_tests.py:" in short[0] and f"full traceback in {log}" in short[0]


def test_log_file_in_a_missing_folder_is_a_usage_error(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(TINY))
    assert main([str(study), "--log-file", str(tmp_path / "no" / "such.log")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--log-file" in err[0] and "folder that exists" in err[0]
    assert list(tmp_path.glob("*.db")) == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_worker_waiting_for_a_dead_workers_trial_says_how_long_until_it_goes_stale(tmp_path, capfd):
    """A one-trial study whose only slot is held by a trial whose worker died 3 s ago (heartbeat
    every 1 s, stale after 8 s): the new worker says it waits, with the seconds left, then runs
    the retried configuration. (With 2 s left the run could start past the wait on a loaded machine.)"""
    config = parse_config(merged(TINY, {"study": {"n_trials": 1, "heartbeat_interval": 1, "grace_period": 8}}),
                          tmp_path)
    target = target_of(config)
    study = open_study(config, target, 256)
    study_storage(study).record_heartbeat(trial_id_of(study.ask()))  # the dead worker's trial
    with sqlite3.connect(tmp_path / "tiny.db") as db:  # its worker stopped beating 3 s ago
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-3 seconds')")
    started = time.monotonic()
    study = run_sweep(config, target, show_progress=True)
    err = capfd.readouterr().err  # written by the forked bookkeeper: captured at the file descriptor
    wait = "waiting for 1 trial of stopped workers to go stale: "
    waits = [line for line in err.splitlines() if line.startswith(wait)]
    assert waits, err
    assert int(waits[0].removeprefix(wait).removesuffix(" s left")) in (1, 2, 3, 4, 5)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert time.monotonic() - started < 30


def test_the_wait_tells_stopped_workers_from_running_ones():
    assert stale_wait_text([0.4, 10.5, 15.5], interval=10, grace_period=20) == \
        "waiting for 1 trial of stopped workers to go stale: 4 s left"
    assert stale_wait_text([0.4, 3.0], interval=10, grace_period=20) == \
        "waiting for 2 running trials of other workers to finish"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_dead_workers_trial_is_queued_again_as_soon_as_it_goes_stale(tmp_path, capfd):
    """Heartbeat every 10 s, stale after 12 s, the dead worker's last beat 7 s ago: the wait says
    about 5 s left, and the trial is failed and queued again then, not at the next 10-s check.
    (With 0.5 s left, as before, a loaded machine started the run past the wait: CI saw no wait line.)"""
    config = parse_config(merged(TINY, {"study": {"n_trials": 1, "heartbeat_interval": 10, "grace_period": 12}}),
                          tmp_path)
    target = target_of(config)
    study = open_study(config, target, 256)
    study_storage(study).record_heartbeat(trial_id_of(study.ask()))
    with sqlite3.connect(tmp_path / "tiny.db") as db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-7 seconds')")
    study = run_sweep(config, target, show_progress=True)
    assert re.search(r"to go stale: [0-5] s left", capfd.readouterr().err)
    dead, retried = study.trials
    assert [dead.state, retried.state] == [TrialState.FAIL, TrialState.COMPLETE]
    waited = (dead.datetime_complete - dead.datetime_start).total_seconds()
    assert waited < 8.5, f"failed {waited:.1f} s after it was asked: at the next heartbeat check, not when stale"


def test_the_last_progress_line_has_no_time_left():
    """Every trial done: the ETA is 0 s, even when the sweep took less than the 2 s the rate needs."""
    progress = Progress(2, Budget("updates", 40, 10), "val_mse", stream=io.StringIO())
    progress.state = StudyState(complete=1, pruned=1)
    assert progress.summary(time.monotonic(), None)["eta"] == "ETA 0s"
    progress.state = StudyState(complete=1)
    assert progress.summary(time.monotonic(), None)["eta"] == "ETA -", "a rate needs 2 s"
