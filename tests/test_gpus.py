"""`--gpus`: one GPU per worker. Parsing and assignment as pure functions, the CLI (CUDA hidden, so
it behaves the same on any machine: a real subprocess for the dry run's plan, `sweeps.run.main` in
this process for the rest), the CPU side of the trial attributes, and the probed micro-batch kept per
device model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from sweeps import exits, probe
from sweeps import run as run_cli
from sweeps.config.gpus import (
    GPU_ENV,
    GPUS_ENV,
    GpuAssignment,
    GpuError,
    assign,
    check_device,
    machine_gpu,
    parse_gpus,
    plan_gpus,
)
from sweeps.config.plan import budget_of
from sweeps.config.target import target_of
from sweeps.errors import ConfigError
from sweeps.loop.runner import run_sweep
from sweeps.loop.workers import run_workers
from sweeps.trial.record import PROBED_MICRO_BATCH_ATTR
from sweeps.trial.run_one import SweepObjective, gpu_attrs, probed_for
from tests.conftest import TINY, in_process, merged

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_gpu_env(monkeypatch):
    for name in (GPUS_ENV, GPU_ENV, "SWEEPS_STORAGE"):
        monkeypatch.delenv(name, raising=False)


def write_study(folder: Path, **overrides) -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(merged(TINY, overrides)))
    return path


def subprocess_cli(study: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m sweeps.run` with CUDA hidden: no GPU, whatever the machine has."""
    full_env = {k: v for k, v in os.environ.items() if k not in (GPUS_ENV, GPU_ENV, "SWEEPS_STORAGE")}
    full_env.update({"PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", **env})
    return subprocess.run([sys.executable, "-m", "sweeps.run", str(study), *args], env=full_env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def cli(monkeypatch, capsys):
    """`sweeps.run.main` in this process, as `subprocess_cli` runs it: CUDA hidden (no device counted
    whatever the machine has), `env` added to the environment."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(run_cli, "cuda_device_count", lambda: 0)

    def run(study: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            return in_process(run_cli.main, [str(study), *args], capsys)

    return run


# --- parsing and assignment (pure) ---


def test_parse_a_list_of_indexes():
    assert parse_gpus("0,2,3", 0, {}) == [0, 2, 3]
    assert parse_gpus(" 3, 1 ", 4, {}) == [3, 1]  # the order given is the order assigned


@pytest.mark.parametrize("spec", ["0,x", "0,0", "-1", "", "0,,1", "1.5", "²"])
def test_bad_lists_are_usage_errors(spec):
    with pytest.raises(GpuError) as err:
        parse_gpus(spec, 0, {})
    assert "\n" not in str(err.value) and "--gpus" in str(err.value)


def test_all_enumerates_what_cuda_shows():
    assert parse_gpus("all", 4, {}) == [0, 1, 2, 3]
    assert parse_gpus("all", 2, {"CUDA_VISIBLE_DEVICES": "2,5"}) == [2, 5]  # machine numbers, not CUDA's
    with pytest.raises(GpuError, match="nothing to enumerate"):
        parse_gpus("all", 0, {})


def test_indexes_are_checked_against_the_machine_when_cuda_shows_them_all():
    with pytest.raises(GpuError, match="no GPU 7"):
        parse_gpus("0,7", 4, {})
    assert parse_gpus("0,7", 2, {"CUDA_VISIBLE_DEVICES": "0,1"}) == [0, 7]  # this process sees a subset


def test_assign_round_robin_with_k_per_gpu():
    got = assign([0, 2, 3], trials_per_gpu=2)
    assert [str(a) for a in got] == ["worker 0 -> GPU 0", "worker 1 -> GPU 2", "worker 2 -> GPU 3",
                                     "worker 3 -> GPU 0", "worker 4 -> GPU 2", "worker 5 -> GPU 3"]
    assert assign([1], 1, workers=1, first_index=4) == [GpuAssignment(4, 1)]
    with pytest.raises(GpuError, match="--workers 4 does not match 3 GPU"):
        assign([0, 2, 3], 1, workers=4)
    with pytest.raises(GpuError, match="--trials-per-gpu must be >= 1"):
        assign([0], 0)


def test_a_workers_environment_shows_only_its_gpu_in_nvidia_smi_order():
    assert GpuAssignment(0, 3).env() == {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                         GPU_ENV: "3"}


def test_plan_from_flag_env_or_nothing():
    def no_cuda() -> int:
        return 0

    def never() -> int:
        raise AssertionError("CUDA asked without --gpus")

    assert plan_gpus(None, None, None, None, never, {}) is None
    assert plan_gpus(None, None, None, None, never, {GPUS_ENV: ""}) is None  # empty counts as unset
    assert plan_gpus(None, None, None, None, no_cuda, {GPUS_ENV: "1,0"}, dry_run=True) == [
        GpuAssignment(0, 1), GpuAssignment(1, 0)]
    assert plan_gpus("2", None, None, None, no_cuda, {GPUS_ENV: "1,0"}, dry_run=True) == [GpuAssignment(0, 2)]
    assert len(plan_gpus("all", 2, None, None, lambda: 2, {})) == 4
    with pytest.raises(GpuError, match="no CUDA device is visible"):
        plan_gpus("0", None, None, None, no_cuda, {})  # a real run needs CUDA
    with pytest.raises(GpuError, match="--trials-per-gpu needs --gpus"):
        plan_gpus(None, 2, None, None, never, {})


def test_machine_gpu_numbering():
    assert machine_gpu(0, {GPU_ENV: "5", "CUDA_VISIBLE_DEVICES": "5"}) == 5  # set by the --gpus parent
    assert machine_gpu(1, {"CUDA_VISIBLE_DEVICES": "4,6"}) == 6
    assert machine_gpu(2, {}) == 2
    assert machine_gpu(0, {"CUDA_VISIBLE_DEVICES": "GPU-8a1c2d3e"}) is None  # a UUID: cannot be told


def test_the_gpu_a_task_records_is_the_one_slurm_gave_it():
    # a site that constrains devices numbers the job's GPUs from 0; Slurm's list holds the machine's
    renumbered = {"CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_GPUS": "3"}
    assert machine_gpu(0, renumbered) == 3
    assert machine_gpu(1, {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_STEP_GPUS": "2,5", "SLURM_JOB_GPUS": "9"}) == 5
    assert machine_gpu(0, {"CUDA_VISIBLE_DEVICES": "3", "SLURM_JOB_GPUS": "3"}) == 3  # not renumbered
    # --gpus all in a task of --gpus-per-task 2: each worker sees its GPU, and records the machine's number
    plan = plan_gpus("all", None, None, None, lambda: 2, {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_GPUS": "4,6"})
    assert plan == [GpuAssignment(0, 0, 4), GpuAssignment(1, 1, 6)]
    assert plan[1].env()["CUDA_VISIBLE_DEVICES"] == "1" and plan[1].env()["SWEEPS_GPU"] == "6"
    assert [str(a) for a in plan] == ["worker 0 -> GPU 4", "worker 1 -> GPU 6"]


def test_study_devices_that_fight_gpus():
    for ok in ("auto", "cuda", "cuda:0"):
        check_device(ok)
    for bad in ("cpu", "cuda:1", "mps"):
        with pytest.raises(ConfigError, match="objective.device"):
            check_device(bad)


# --- the CLI: one real subprocess, the rest in this process ---


def test_dry_run_prints_each_workers_gpu_without_cuda(tmp_path):
    done = subprocess_cli(write_study(tmp_path), "--dry-run", "--gpus", "0,2,3", "--trials-per-gpu", "2")
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("worker ")]
    assert lines == ["worker 0 -> GPU 0", "worker 1 -> GPU 2", "worker 2 -> GPU 3",
                     "worker 3 -> GPU 0", "worker 4 -> GPU 2", "worker 5 -> GPU 3"]
    assert "nvidia-smi" in done.stdout


def test_dry_run_takes_sweeps_gpus_from_the_environment(tmp_path, cli):
    done = cli(write_study(tmp_path), "--dry-run", SWEEPS_GPUS="1")
    assert done.returncode == 0, done.stderr
    assert "worker 0 -> GPU 1" in done.stdout


@pytest.mark.parametrize("args, says", [
    (["--dry-run", "--gpus", "all"], "nothing to enumerate"),
    (["--gpus", "0"], "no CUDA device is visible"),
    (["--dry-run", "--gpus", "0,x"], "'x' is not a GPU index"),
    (["--dry-run", "--gpus", "1,1"], "listed twice"),
    (["--dry-run", "--gpus=-1"], "'-1' is not a GPU index"),
    (["--dry-run", "--gpus", ""], "--gpus is empty"),
    (["--dry-run", "--gpus", "0,1", "--workers", "3"], "--workers 3 does not match"),
    (["--dry-run", "--trials-per-gpu", "2"], "--trials-per-gpu needs --gpus"),
])
def test_unusable_gpus_exit_2_with_one_line(tmp_path, args, says, cli):
    study = write_study(tmp_path, study={"storage": "sqlite:///store.db"})
    done = cli(study, *args)
    assert done.returncode == exits.USAGE == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and says in done.stderr
    assert not (tmp_path / "store.db").exists()


def test_gpus_with_a_cpu_study_is_a_config_error(tmp_path, cli):
    done = cli(write_study(tmp_path, objective={"device": "cpu"}), "--dry-run", "--gpus", "0")
    assert done.returncode == 2
    assert "objective.device" in done.stderr and "auto or cuda" in done.stderr


def test_help_documents_the_flags(capsys):
    done = in_process(run_cli.main, ["--help"], capsys)
    assert done.returncode == 0
    assert "--gpus" in done.stdout and "--trials-per-gpu" in done.stdout and "GPUs x" in done.stdout


# --- the parent path: always children, each with its own environment ---


def test_one_gpu_still_goes_through_the_worker_children(tmp_path, monkeypatch):
    seen = {}

    def fake_run_workers(study_file, config, target, n_workers, n_train, show_progress=True, first_index=None,
                         gpus=None, overrides=(), log_file=None, changes="check"):
        seen.update(n_workers=n_workers, gpus=gpus)
        return 0

    monkeypatch.setattr(run_cli, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(run_cli, "run_workers", fake_run_workers)
    assert run_cli.main([str(write_study(tmp_path)), "--quiet", "--gpus", "0"]) == 0
    assert seen == {"n_workers": 1, "gpus": [GpuAssignment(0, 0)]}


def test_workers_get_their_gpu_in_their_environment(tmp_path, tiny_config, capfd):
    """A real child told to use GPU 3 on a machine without it refuses (exit 2) instead of
    training on the CPU unnoticed; its message proves the index arrived in its environment."""
    config = tiny_config()
    study = write_study(tmp_path)
    code = run_workers(str(study), config, target_of(config), 1, 256, show_progress=False, gpus=[GpuAssignment(0, 3)])
    assert code == 2
    assert "the worker for GPU 3 sees no CUDA device" in capfd.readouterr().err


# --- trial attributes on the CPU, the probe per device model ---


def test_cpu_trials_record_no_gpu(tiny_config, sweep):
    assert gpu_attrs(CPU) == {}
    study = sweep(tiny_config())
    assert study.trials and all("gpu" not in t.user_attrs and "gpu_name" not in t.user_attrs for t in study.trials)


def test_probed_limit_applies_to_its_device_model_only(tiny_config):
    assert probed_for({"cpu": 8, "NVIDIA H100 80GB HBM3": 512}, CPU) == 8
    assert probed_for({"NVIDIA A10": 16}, CPU) is None
    assert probed_for(8, CPU) is None  # a plain int from an older probe: its device is unknown
    config = tiny_config()
    assert SweepObjective(config, None, budget_of(config), {"NVIDIA A10": 16}).max_micro_batch is None
    assert SweepObjective(config, None, budget_of(config), {"cpu": 16}).max_micro_batch == 16


def test_probe_writes_under_cpu_and_keeps_other_models(tmp_path, tiny_config, capsys):
    config = tiny_config(search={"batch_size": [64]})
    url = target_of(config).storage_url
    seeded = optuna.create_study(storage=url, study_name="tiny", direction="minimize")
    seeded.set_user_attr(PROBED_MICRO_BATCH_ATTR, {"NVIDIA A10": 8})
    study_file = write_study(tmp_path, search={"batch_size": [64]})
    assert probe.main([str(study_file), "--limit", "16"]) == 0
    assert "for 'cpu'" in capsys.readouterr().out
    stored = optuna.load_study(study_name="tiny", storage=url).user_attrs
    assert stored[PROBED_MICRO_BATCH_ATTR] == {"NVIDIA A10": 8, "cpu": 16}
    assert stored["probe"]["device_model"] == "cpu"
    study = run_sweep(config, target_of(config), show_progress=False)
    big = [t.user_attrs for t in study.trials if t.user_attrs.get("batch_size") == 64]
    assert big and all((a["micro_batch"], a["accumulation_steps"]) == (16, 4) for a in big)


def test_a_limit_probed_on_another_model_is_not_inherited(tiny_config):
    config = tiny_config(search={"batch_size": [64]})
    url = target_of(config).storage_url
    seeded = optuna.create_study(storage=url, study_name="tiny", direction="minimize")
    seeded.set_user_attr(PROBED_MICRO_BATCH_ATTR, {"NVIDIA A10": 16})
    study = run_sweep(config, target_of(config), show_progress=False)
    big = [t.user_attrs for t in study.trials if t.user_attrs.get("batch_size") == 64]
    assert big and all((a["micro_batch"], a["accumulation_steps"]) == (64, 1) for a in big)
