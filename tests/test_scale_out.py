"""docs/scale_out.md: its commands are the tested ones. The one-host and many-hosts commands run
here, as written, with a short study's `--set` overrides after them; the Slurm lines are those
tests/test_slurm.py runs; the kubectl lines are docs/kubernetes.md's, on the manifests
tests/test_kubernetes.py validates; the script the page shows is what `--dry-run` prints."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tests import test_slurm
from tests.conftest import PG_URL, needs_pg
from tests.test_slurm import FINISHED, assert_exactly_finished, project_env, sweeps_argv, with_examples

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "scale_out.md"

ONE_HOST = "sweeps run examples/digits.yaml --workers 4"
EACH_HOST = "sweeps run examples/digits.yaml"
WORKERS = "sweeps studies examples/digits.yaml --workers"
TESTED = {ONE_HOST, EACH_HOST, WORKERS, *test_slurm.DOC_COMMANDS}
# a short study: 8 trials of 6,000 examples each
SHORT = ["--set", "study.n_trials=8", "--set", "budget.per_trial=6000", "--set", "budget.eval_every=2000"]


def shell_lines(text: str) -> list[str]:
    """The commands of the page's sh blocks, one per line (continuations joined, comments cut)."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                lines.append(" ".join(command.split()))
    return lines


def test_every_command_on_the_page_is_one_the_tests_run():
    lines = shell_lines(PAGE.read_text())
    sweeps_lines = [line for line in lines if line.startswith("sweeps ")]
    assert set(sweeps_lines) == TESTED  # each tested one is on the page, and nothing else
    kubernetes = shell_lines((REPO / "docs" / "kubernetes.md").read_text())
    kubectl = [line for line in lines if line.startswith(("kubectl", "PASSWORD="))]
    assert kubectl and all(line in kubernetes for line in kubectl)  # the Kubernetes page's own steps
    for line in kubectl:
        for path in re.findall(r"(?:-k|-f) (\S+)", line):
            assert (REPO / path).exists(), path
    assert set(lines) - set(sweeps_lines) - set(kubectl) == {
        "export SWEEPS_STORAGE=postgresql+psycopg://sweeps:PASSWORD@db.example:5432/sweeps"}


def test_the_script_on_the_page_is_what_dry_run_prints(tmp_path, capsys, monkeypatch):
    shown = re.search(r"```bash\n(#!/bin/bash\n.*?)```", PAGE.read_text(), flags=re.S).group(1)
    done = test_slurm.dry_run(tmp_path, test_slurm.DOC_DRY_RUN, capsys=capsys, monkeypatch=monkeypatch,
                              storage="postgresql+psycopg://sweeps:PASSWORD@db.example:5432/sweeps")
    assert done.returncode == 0, done.stderr
    printed = done.stdout.replace(str(tmp_path), "/home/me/sweeps").replace(
        shlex.quote(sys.executable), "/home/me/venv/bin/python")
    assert printed == shown


def run(folder: Path, command: str, *extra: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(sweeps_argv(command, *extra), cwd=folder, env=project_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, out + err
    return out


def assert_workers_listed(folder: Path, name: str, started: int, **env: str) -> None:
    """The page's listing of the study's workers: each registered one, numbered in turn, the
    trials they finished adding up to the study's 8, the same count in the text as in the JSON. A
    worker registers when it starts unless the study has its trials by then, so of `started`
    workers at least one registers, and all do only if each starts before the others finish the
    8 short trials (a fresh-clone CI run listed 3 of 4: one worker started late)."""
    listed = finish(run(folder, WORKERS, **env))
    studies = json.loads(finish(run(folder, WORKERS, "--format", "json", **env)))["studies"]
    workers = next(study for study in studies if study["study"] == name)["workers"]
    assert 1 <= len(workers) <= started
    assert [worker["worker"] for worker in workers] == list(range(len(workers)))
    assert sum(worker["finished"] for worker in workers) == 8
    assert f"workers of {name}: {len(workers)}\n" in listed


def test_one_host(tmp_path):
    folder = with_examples(tmp_path)
    finish(run(folder, ONE_HOST, *SHORT, SWEEPS_STORAGE=""))
    store = f"sqlite:///{folder / 'examples' / 'digits.db'}"  # the study file's own store
    assert_exactly_finished(optuna.load_study(study_name="digits-mlp", storage=store).trials, 8)
    assert_workers_listed(folder, "digits-mlp", started=4, SWEEPS_STORAGE="")


@needs_pg
def test_many_hosts_on_one_store(tmp_path):
    folder = with_examples(tmp_path)
    name = f"scale-out-{os.urandom(4).hex()}"
    try:
        hosts = [run(folder, EACH_HOST, *SHORT, "--study-name", name, SWEEPS_STORAGE=PG_URL) for _ in range(2)]
        for host in hosts:
            finish(host)
        trials = optuna.load_study(study_name=name, storage=PG_URL).trials
        assert_exactly_finished(trials, 8)
        assert {t.user_attrs["worker"] for t in trials if t.state in FINISHED} <= {0, 1}
        assert not [t for t in trials if t.state == TrialState.RUNNING]
        assert_workers_listed(folder, name, started=2, SWEEPS_STORAGE=PG_URL)
    finally:
        optuna.delete_study(study_name=name, storage=PG_URL)
