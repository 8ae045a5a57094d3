"""`sweeps slurm`: the batch script it writes (here, without Slurm), and job arrays run for real
on a one-node Slurm cluster (marker `slurm`; tests/slurm/cluster.py starts it) with PostgreSQL:

1. a 4-task array on the digits example finishes the study with exactly n_trials finished trials,
   no configuration finished twice, every task registered as a worker under its array task;
2. `scancel` of one task mid-trial: its trials are failed and queued again, and the other task
   finishes them;
3. a task that reaches its time limit (with --requeue): the warning signal stops its worker, whose
   trial is failed and queued again; the task requeues itself and, restarted, finishes that trial.
   Slurm may send the warning up to a minute early, so the test asserts the outcome, not the moment.

The cluster needs root and Debian's slurm-wlm and munge (tests/slurm/install.sh installs them,
as root, when they are missing); without them these tests skip, except under CI=true, where
they fail. Each test runs the scale-out page's command as written (docs/scale_out.md), with a
short study's `--set` overrides after it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from storage.workers import host_of, registered_workers, slurm_label
from sweeps import exits, slurm
from sweeps.loop import signals
from tests.conftest import PG_URL, load_study, postgres_held

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "slurm"
ON_CI = os.environ.get("CI", "").lower() in ("true", "1")
FAKE_PG = "postgresql+psycopg://sweeps:s3cret@db.example:5432/sweeps"  # never opened: dry runs only
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# The scale-out page's Slurm commands (docs/scale_out.md holds each line as written here).
# A test that needs other flags appends them: the last of a flag given twice wins.
DOC_DRY_RUN = "sweeps slurm examples/digits.yaml --array 4 --dry-run"
DOC_SUBMIT = "sweeps slurm examples/digits.yaml --array 4"
DOC_WAIT = "sweeps slurm examples/digits.yaml --array 4 --wait"
DOC_GPUS = "sweeps slurm examples/digits.yaml --array 8 --gpus-per-task 1 --time 4:00:00 --requeue"
DOC_STUDIES = "sweeps studies examples/digits.yaml --workers"
DOC_COMMANDS = [DOC_DRY_RUN, DOC_SUBMIT, DOC_WAIT, DOC_GPUS, DOC_STUDIES]
# heartbeats every 2 s; a trial whose worker vanished goes stale after 20 s, longer than the PostgreSQL
# restart tests/test_workers.py makes (a signalled worker queues its trials again at once, heartbeat or not)
QUICK = ["--set", "study.heartbeat_interval=2", "--set", "study.grace_period=20"]
# trials that train for a fixed 3 s each (or are pruned), so a task can be caught mid-trial
TIMED = [*QUICK, "--set", "budget={unit: seconds, per_trial: 3, eval_every: 1}", "--set", "pruner.min_resource=1",
         "--set", "search.epochs=null", "--set", "early_stopping=null"]


def sweeps_argv(command: str, *extra: str) -> list[str]:
    """A `sweeps ...` line of the docs as this interpreter runs it, with `extra` arguments after it."""
    words = shlex.split(command)
    assert words[0] == "sweeps"
    return [sys.executable, "-m", "sweeps.console", *words[1:], *extra]


def project_env(**extra: str) -> dict[str, str]:
    """The environment of a command (and, through sbatch, of its tasks): this checkout first on the path."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def with_examples(folder: Path) -> Path:
    """`folder` with the digits example under examples/, as the docs' commands name it."""
    (folder / "examples").mkdir(exist_ok=True)
    shutil.copy(REPO / "examples" / "digits.yaml", folder / "examples" / "digits.yaml")
    return folder


def dry_run(folder: Path, command: str, *extra: str, storage: str = FAKE_PG, capsys=None, monkeypatch=None,
            path: str | None = None) -> subprocess.CompletedProcess:
    """A `sweeps slurm` line of the docs, run in this process in `folder` (stdout, stderr as captured)."""
    monkeypatch.chdir(with_examples(folder))
    monkeypatch.setenv("SWEEPS_STORAGE", storage)
    if path is not None:
        monkeypatch.setenv("PATH", path)
    words = shlex.split(command)
    assert words[:2] == ["sweeps", "slurm"]
    capsys.readouterr()
    code = slurm.main([*words[2:], *extra])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(words, code, out, err)


# --- the script, without Slurm -------------------------------------------------------------------


def test_dry_run_prints_a_job_array_of_workers_on_the_shared_store(tmp_path, capsys, monkeypatch):
    done = dry_run(tmp_path, DOC_DRY_RUN, "--set", "study.n_trials=12", capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    script = done.stdout
    assert script.startswith("#!/bin/bash\n")
    directives = re.findall(r"^#SBATCH (\S+)$", script, flags=re.M)
    assert directives == ["--job-name=sweeps-digits-mlp", "--array=0-3", "--ntasks=1", "--signal=B:USR1@120",
                          "--open-mode=append", f"--chdir={tmp_path}"]
    worker = [sys.executable, *slurm.worker_argv(str(tmp_path / "examples" / "digits.yaml"), ["study.n_trials=12"])]
    assert f"\n{shlex.join(worker)} &\n" in script
    assert "s3cret" not in script and "postgresql+psycopg://sweeps:***@db.example:5432/sweeps" in script
    assert "scontrol requeue" not in script  # only with --requeue
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_dry_run_asks_for_the_gpus_and_the_time_limit(tmp_path, capsys, monkeypatch):
    done = dry_run(tmp_path, DOC_GPUS, "--dry-run", capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    directives = re.findall(r"^#SBATCH (\S+)$", done.stdout, flags=re.M)
    assert {"--array=0-7", "--gpus-per-task=1", "--time=4:00:00", "--requeue", "--signal=B:USR1@120"} <= set(directives)
    assert 'scontrol requeue "$SLURM_JOB_ID"' in done.stdout
    assert "--gpus all" not in done.stdout  # one GPU: the worker uses the one Slurm gave it, as cuda:0

    more = dry_run(tmp_path, "sweeps slurm examples/digits.yaml --array 2 --gpus-per-task 4 --partition gpu "
                             "--cpus-per-task 8 --mem 32G --max-running 1 --signal-lead 300 --time 1-00:00 "
                             "--job-name big --sbatch-option=--account=lab --dry-run",
                   capsys=capsys, monkeypatch=monkeypatch)
    assert more.returncode == 0, more.stderr
    directives = re.findall(r"^#SBATCH (\S+)$", more.stdout, flags=re.M)
    assert directives[:9] == ["--job-name=big", "--array=0-1%1", "--ntasks=1", "--cpus-per-task=8", "--mem=32G",
                              "--gpus-per-task=4", "--time=1-00:00", "--partition=gpu", "--signal=B:USR1@300"]
    assert directives[-1] == "--account=lab"
    assert " --gpus all &\n" in more.stdout  # four GPUs: one worker process per GPU


def test_a_new_study_runs_under_its_name_in_every_task(tmp_path, capsys, monkeypatch):
    done = dry_run(tmp_path, DOC_DRY_RUN, "--new-study", "digits-2", capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --job-name=sweeps-digits-2\n" in done.stdout
    assert f"run {tmp_path / 'examples' / 'digits.yaml'} --study-name digits-2 &\n" in done.stdout


@pytest.mark.parametrize(("extra", "says"), [
    (["--array", "0"], "--array must be >= 1 (got 0)"),
    (["--array", "2", "--time", "2"], "--time 2 (120 s) is not longer than --signal-lead 120 s"),
    (["--array", "2", "--time", "90:xx"], "--time '90:xx' is not a Slurm time"),
    (["--array", "2", "--signal-lead", "0"], "--signal-lead must be between 1 and 65535"),
    (["--array", "2", "--gpus-per-task", "-1"], "--gpus-per-task must be >= 0"),
])
def test_bad_flags_are_usage_errors_in_one_line(tmp_path, capsys, monkeypatch, extra, says):
    done = dry_run(tmp_path, "sweeps slurm examples/digits.yaml --dry-run", *extra, capsys=capsys,
                   monkeypatch=monkeypatch)
    assert done.returncode == exits.USAGE
    assert done.stderr.count("\n") == 1 and says in done.stderr


def test_a_sqlite_store_is_refused_with_the_fix(tmp_path, capsys, monkeypatch):
    done = dry_run(tmp_path, DOC_DRY_RUN, storage="sqlite:///shared.db", capsys=capsys, monkeypatch=monkeypatch)
    assert done.returncode == exits.USAGE and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "SQLite file" in done.stderr and "--storage postgresql" in done.stderr


def test_without_sbatch_it_says_so(tmp_path, capsys, monkeypatch):
    (tmp_path / "bin").mkdir()
    done = dry_run(tmp_path, DOC_SUBMIT, capsys=capsys, monkeypatch=monkeypatch, path=str(tmp_path / "bin"))
    assert done.returncode == exits.USAGE
    assert done.stderr.startswith("error: sbatch not found on the PATH") and done.stderr.count("\n") == 1


def fake_sbatch(folder: Path, body: str) -> str:
    """A folder holding an `sbatch` that runs `body` (bash), for the PATH."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\n{body}\n")
    (bin_dir / "sbatch").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.skipif(not PG_URL, reason="set SWEEPS_TEST_POSTGRES_URL to run PostgreSQL tests")
def test_submission_hands_sbatch_the_script_and_the_store_in_its_environment(tmp_path, capsys, monkeypatch,
                                                                             study_name):
    record = tmp_path / "sbatch.txt"
    path = fake_sbatch(tmp_path, f'{{ echo "argv: $*"; echo "store: $SWEEPS_STORAGE"; cat; }} > {record}; echo 4711')
    done = dry_run(tmp_path, DOC_SUBMIT, "--study-name", study_name, "--set", "study.n_trials=2", storage=PG_URL,
                   capsys=capsys, monkeypatch=monkeypatch, path=path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"submitted job array 4711: 4 tasks, each a worker of study '{study_name}'")
    argv, store, script = record.read_text().split("\n", 2)
    assert argv == "argv: --parsable" and store == f"store: {PG_URL}"  # the URL in the environment only
    assert script.startswith("#!/bin/bash\n") and "#SBATCH --array=0-3" in script
    assert optuna.load_study(study_name=study_name, storage=PG_URL).user_attrs  # created before the tasks run

    refused = fake_sbatch(tmp_path, 'echo "sbatch: error: Batch job submission failed: Invalid partition name" >&2; '
                                    "exit 1")
    done = dry_run(tmp_path, DOC_SUBMIT, "--study-name", study_name, "--set", "study.n_trials=2", storage=PG_URL,
                   capsys=capsys, monkeypatch=monkeypatch, path=refused)
    assert done.returncode == exits.FAILED
    assert done.stderr == ("error: sbatch refused the job array: sbatch: error: Batch job submission failed: "
                           "Invalid partition name\n")


@pytest.mark.skipif(not PG_URL, reason="set SWEEPS_TEST_POSTGRES_URL to run PostgreSQL tests")
def test_the_submitter_measures_and_books_the_lr_prior_before_any_task_runs(tmp_path, capsys, monkeypatch,
                                                                            study_name):
    """`search.lr_range_test` under a total budget: `sweeps slurm` measures the prior once, stores it
    and books its examples in the ledger before sbatch; the array's tasks then read it (open_study,
    as `--workers`' do, tests/test_lr_prior.py)."""
    from storage import ledger
    from sweeps.search.prior import stored_prior
    from tests.conftest import engine

    path = fake_sbatch(tmp_path, "cat > /dev/null; echo 4711")
    done = dry_run(tmp_path, DOC_SUBMIT, "--study-name", study_name,
                   "--set", "search.lr_range_test={batch_sizes: [16, 64]}",
                   "--set", "study.total_budget={amount: 3.0e6, unit: examples}",
                   storage=PG_URL, capsys=capsys, monkeypatch=monkeypatch, path=path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("LR range test (") == 1, done.stderr
    study = optuna.load_study(study_name=study_name, storage=PG_URL)
    prior = stored_prior(study)
    assert prior is not None and prior.batch_sizes == (16, 64) and not study.trials
    state = ledger.read(engine(PG_URL), study._study_id)
    assert state.spent == state.settled == prior.examples == 200 * (16 + 64) and state.open == 0


def test_slurm_times():
    assert [slurm.slurm_seconds(t) for t in ("30", "5:30", "4:00:00", "1-0", "1-02:03", "1-02:03:04")] == [
        1800, 330, 14400, 86400, 86400 + 7200 + 180, 86400 + 7200 + 180 + 4]
    assert slurm.slurm_seconds("UNLIMITED") is None and slurm.slurm_seconds("0") is None
    with pytest.raises(ValueError):
        slurm.slurm_seconds("4h")


def test_a_worker_under_slurm_is_registered_with_its_array_task():
    assert slurm_label({}) is None
    assert slurm_label({"SLURM_JOB_ID": "57"}) == "slurm 57"
    array_task = {"SLURM_JOB_ID": "58", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3"}
    assert slurm_label(array_task) == "slurm 12_3"
    assert slurm_label({**array_task, "SLURM_RESTART_COUNT": "1"}) == "slurm 12_3 restart 1"
    assert host_of("node7", array_task) == "node7 [slurm 12_3]"
    assert host_of("n" * 300, array_task).endswith("[slurm 12_3]") and len(host_of("n" * 300, array_task)) == 255
    assert host_of("node7", {}) == "node7"


def test_a_second_sigterm_cannot_interrupt_the_closing_the_first_started():
    """Slurm signals every process of a task, and the batch script passes the signal on: the worker
    gets SIGTERM twice within milliseconds. The first stops the sweep; the second is ignored (it
    once interrupted the closing of the open trials, leaving them RUNNING)."""
    saved = signal.getsignal(signal.SIGTERM)
    try:
        signals.install()
        with pytest.raises(signals.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # nothing raised: ignored
    finally:
        signal.signal(signal.SIGTERM, saved)


# --- on a real Slurm cluster ------------------------------------------------------------------------


def unavailable(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: the Slurm tests must run; .ci/run installs Slurm)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    from tests.slurm.cluster import Cluster, missing_binaries

    if not PG_URL:
        unavailable("set SWEEPS_TEST_POSTGRES_URL: the array's tasks share a PostgreSQL store")
    if os.geteuid() != 0:
        unavailable("the Slurm tests start slurmctld, slurmd and munged, which needs root")
    if missing_binaries():
        done = subprocess.run(["bash", str(SCRIPTS / "install.sh")], capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or missing_binaries():
            unavailable(f"no {', '.join(missing_binaries())}: tests/slurm/install.sh (Debian's slurm-wlm and "
                        f"munge) failed: {done.stderr.strip()[-500:]}")
    running = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(autouse=True)
def postgres_steady():
    """The Slurm tasks cannot ride out a PostgreSQL restart in another test (`postgres_held`)."""
    with postgres_held(exclusive=False):
        yield


@pytest.fixture
def study_name():
    name = f"slurm-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=PG_URL)
    except KeyError:
        pass


def submit(cluster, folder: Path, command: str, *extra: str, timeout: float = 150) -> tuple[str, str]:
    """Run a `sweeps slurm` line of the docs in `folder`; its job id and output."""
    done = cluster.run(sweeps_argv(command, *extra), cwd=with_examples(folder), timeout=timeout,
                       env=project_env(SWEEPS_STORAGE=PG_URL, SLURM_CONF=str(cluster.conf)), check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output + "\n" + task_outputs(folder) + cluster.logs()
    job = re.search(r"submitted job array (\d+)", done.stdout)
    assert job, output
    return job.group(1), output


def task_outputs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(folder.glob("slurm-*")))


def trials_of(name: str) -> list[optuna.trial.FrozenTrial]:
    return load_study(name, PG_URL).get_trials(deepcopy=False)


def workers_of(name: str) -> dict[str, int]:
    """The study's registered workers: host (with the Slurm task) -> worker number."""
    storage = optuna.storages.RDBStorage(PG_URL, skip_compatibility_check=True)
    try:
        study_id = storage.get_study_id_from_name(name)
        return {w["host"]: w["number"] for w in registered_workers(storage.engine, study_id)}
    finally:
        storage.engine.dispose()


def number_of(workers: dict[str, int], label: str) -> int:
    hits = [number for host, number in workers.items() if host.endswith(f"[{label}]")]
    assert len(hits) == 1, (label, workers)
    return hits[0]


def assert_exactly_finished(trials: list, n_trials: int) -> None:
    states = [t.state for t in trials]
    assert sum(s in FINISHED for s in states) == n_trials, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    finished = [tuple(sorted(t.params.items())) for t in trials if t.state in FINISHED]
    assert len(set(finished)) == len(finished)  # no configuration finished twice


def restarts(host: str, job: str) -> int:
    """How many times Slurm had requeued task 0 of `job` when this worker registered."""
    match = re.search(rf"\[slurm {job}_0(?: restart (\d+))?\]$", host)
    assert match, host
    return int(match.group(1) or 0)


def wait_until_gone(cluster, job: str, timeout: float) -> None:
    cluster.wait_for(f"job {job} to leave the queue", lambda: not cluster.queued(job), timeout)


@pytest.mark.slurm
def test_a_four_task_array_finishes_the_study_exactly(cluster, tmp_path, study_name):
    n_trials = 12
    # trials of about 2 s, so the study outlasts the tasks' start: each task registers only if the study
    # still has trials when it starts (with 12,000 examples a trial, the whole study took 1.3 to 1.8 s and the
    # four tasks registered within 0.45 s of each other on an idle machine)
    job, output = submit(cluster, tmp_path, DOC_WAIT, "--study-name", study_name, *QUICK,
                         "--set", f"study.n_trials={n_trials}", "--set", "budget.per_trial=48000",
                         "--set", "budget.eval_every=16000")
    trials = trials_of(study_name)
    assert_exactly_finished(trials, n_trials)
    workers = workers_of(study_name)
    numbers = [number_of(workers, f"slurm {job}_{task}") for task in range(4)]  # each task a worker
    assert sorted(numbers) == sorted(set(numbers))
    assert {t.user_attrs["worker"] for t in trials if t.state in FINISHED} <= set(numbers)
    assert len({t.user_attrs["worker"] for t in trials if t.state in FINISHED}) > 1  # the tasks shared the trials
    assert f"workers of array {job}: 4" in output and f"{n_trials} trials finished" in output
    # the progress lines of --wait count the array's tasks: running, pending, registered as workers
    assert re.search(rf"\| array {job}: \d+ running[^|]*; [1-4] registered \|", output), output
    logs = task_outputs(tmp_path)
    assert logs.count("--- slurm-") == 4 and "Traceback" not in logs, logs

    listed = cluster.run(sweeps_argv(DOC_STUDIES, "--storage", PG_URL), cwd=tmp_path, env=project_env())
    section = listed.stdout.split(f"workers of {study_name}: ")[1].split("\n\n")[0]
    assert section.startswith("4\n") and all(f"[slurm {job}_{task}]" in section for task in range(4)), listed.stdout


@pytest.mark.slurm
def test_a_cancelled_task_leaves_its_trial_to_the_others(cluster, tmp_path, study_name):
    n_trials = 6
    job, _ = submit(cluster, tmp_path, DOC_SUBMIT, "--array", "2", "--study-name", study_name, *TIMED,
                    "--set", f"study.n_trials={n_trials}")

    def both_training() -> bool:
        if len(workers_of(study_name)) < 2:
            return False
        trials = trials_of(study_name)
        return (sum(t.state == TrialState.RUNNING for t in trials) >= 2
                and any(t.state in FINISHED for t in trials))

    cluster.wait_for("both tasks to train", both_training, 90)
    cluster.run(["scancel", f"{job}_0"])
    wait_until_gone(cluster, job, 90)

    trials = trials_of(study_name)
    assert_exactly_finished(trials, n_trials)
    workers = workers_of(study_name)
    cancelled, other = number_of(workers, f"slurm {job}_0"), number_of(workers, f"slurm {job}_1")
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped and all("interrupted: Terminated" in t.user_attrs.get("error", "") for t in stopped), (
        [(t.number, t.user_attrs, t.system_attrs) for t in trials], task_outputs(tmp_path))
    assert all(t.user_attrs["worker"] == cancelled for t in stopped), [t.user_attrs for t in stopped]
    retries = {t.system_attrs.get("failed_trial"): t for t in trials}
    for trial in stopped:  # each queued again, and finished by the task left
        retry = retries[trial.number]
        assert retry.state in FINISHED and retry.user_attrs["worker"] == other
        assert retry.params == trial.params
    assert "terminated" in (tmp_path / f"slurm-{job}_0.out").read_text()


@pytest.mark.slurm
def test_a_task_at_its_time_limit_requeues_its_trial_and_itself(cluster, tmp_path, study_name):
    """--time 1 with --signal-lead 20: the warning comes 20 to 50 s into the task (Slurm checks time
    limits every 30 s and may signal that much early), or even before its worker took a trial; then
    the next run of the task is warned in turn. Whichever run is warned mid-trial, its trial is failed
    and queued again, and the run after it finishes that trial."""
    job, _ = submit(cluster, tmp_path, DOC_GPUS, "--array", "1", "--gpus-per-task", "0", "--time", "1",
                    "--signal-lead", "20", "--study-name", study_name, *TIMED, "--set", "study.n_trials=200")

    def finished_by_a_later_run():
        workers = {number: host for host, number in workers_of(study_name).items()}
        trials = trials_of(study_name)
        retries = {t.system_attrs.get("failed_trial"): t for t in trials}
        for trial in trials:
            retry = retries.get(trial.number)
            if (trial.state == TrialState.FAIL and "interrupted: Terminated" in trial.user_attrs.get("error", "")
                    and retry is not None and retry.state in FINISHED):
                return trial, retry, workers
        return None

    trial, retry, workers = cluster.wait_for("a warned run's trial to be finished by the requeued task",
                                             finished_by_a_later_run, 150, every=1)
    cluster.run(["scancel", job])
    warned, after = workers[trial.user_attrs["worker"]], workers[retry.user_attrs["worker"]]
    assert restarts(warned, job) < restarts(after, job), (warned, after)
    assert retry.params == trial.params
    wait_until_gone(cluster, job, 30)
    assert not [t for t in trials_of(study_name) if t.state == TrialState.RUNNING]
