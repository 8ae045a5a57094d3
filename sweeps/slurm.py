"""`sweeps slurm STUDY.yaml --array N`: the study's workers as one Slurm job array on a shared store.

It validates the study file, creates the study in the store (as the parent of `--workers` does),
then writes a batch script and submits it with `sbatch`: each of the N tasks runs one worker,
`python -m sweeps.console run STUDY.yaml` (`worker_argv`: the command a compose worker and a
Kubernetes pod run too), and the workers share the study through the store, each with its own
registered number (sampler seed) and, in the registry, its Slurm task (`vm [slurm 12_3]`, listed
by `sweeps studies --workers`). `--dry-run` prints the script instead, and submits nothing.

The store must be a server (PostgreSQL): the tasks run on the cluster's nodes, and a SQLite file
is one machine's. Its URL travels in the environment that sbatch passes on to the tasks
(`$SWEEPS_STORAGE`), never in the script, which Slurm keeps and shows (a password stays out).

Stopping: Slurm sends the batch shell SIGUSR1 `--signal-lead` seconds before the time limit
(`--signal=B:USR1@S`; Slurm may send it up to a minute earlier than asked), and SIGTERM on
`scancel` or preemption. The script passes either on to the worker as SIGTERM (Slurm signals the
worker itself too on `scancel`; a second SIGTERM changes nothing): the worker fails its open
trials, queues them again for the other tasks, and exits 143. With `--requeue`, a task
warned of its time limit then puts itself back in the queue (`scontrol requeue`), and joins the
study again when it restarts; `#SBATCH --requeue` also lets Slurm requeue it on preemption. A
task whose worker ends the study (exit 0) cancels the array's tasks still pending.

GPUs: `--gpus-per-task G` asks Slurm for G GPUs per task, and the worker uses what Slurm gave it
(CUDA_VISIBLE_DEVICES): one GPU, `objective.device` auto or cuda; more, one worker process per
GPU (`--gpus all`). The GPU a trial records is the machine's number (`sweeps.config.gpus`).

`--wait` stays after submitting and shows the study's progress with the array's tasks (running,
pending, registered) until none is left in the queue, then the array's workers and the summary,
and exits as `sweeps run` does.

Exit codes (`sweeps.exits`): 0 submitted (or printed; with --wait, the study's ending), 1 sbatch
refused the job (its message), 2 usage (an invalid flag or study file, a SQLite store, no sbatch
on the PATH), 3 the store cannot be opened, 130 Ctrl-C while waiting (the array runs on).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import optuna
from sqlalchemy.engine import make_url

from storage import redact
from storage.optuna_private import engine_of, study_id_of, study_storage
from storage.sql import ENV_VAR
from storage.workers import registered_workers
from sweeps import exits
from sweeps.budget.ledger_view import line_of
from sweeps.cli import add_override_argument, add_study_arguments, fail, run_command
from sweeps.config.plan import budget_of, check_plan
from sweeps.config.study_file import SweepConfig, load_config
from sweeps.config.target import SweepTarget, target_of
from sweeps.loop.bookkeeping import finished_count
from sweeps.loop.ending import end_sweep
from sweeps.loop.runner import load_task, open_study
from sweeps.loop.workers_progress import WorkersProgress
from sweeps.results.resume import ALLOW_CHANGES_FLAG, NEW_STUDY_FLAG, complete_note
from sweeps.studies import worker_rows, workers_table

DEFAULT_SIGNAL_LEAD_S = 120
MAX_SIGNAL_LEAD_S = 65535  # Slurm's limit for --signal
POLL_S = 2.0
EXAMPLE = """examples:
  sweeps slurm study.yaml --array 8 --storage postgresql+psycopg://USER@HOST:5432/DB --dry-run
  sweeps slurm study.yaml --array 8 --gpus-per-task 1 --time 4:00:00 --partition gpu --requeue
  sweeps slurm study.yaml --array 4 --time 30 --wait   # and show the progress until the array ends
"""


def worker_argv(study_file: str, overrides: list[str] | tuple[str, ...] = (), study_name: str | None = None,
                n_trials: int | None = None) -> list[str]:
    """The worker's arguments after the interpreter: one `sweeps run` on the shared store, as a
    Slurm task, a compose worker or a Kubernetes pod runs it. Through the console entry, which
    keeps a user's own storage.py or objectives.py in the working directory from shadowing the
    project's packages."""
    return ["-m", "sweeps.console", "run", study_file,
            *(["--study-name", study_name] if study_name else []),
            *(["--n-trials", str(n_trials)] if n_trials is not None else []),
            *[arg for text in overrides for arg in ("--set", text)]]


def slurm_seconds(text: str) -> int | None:
    """Slurm's --time as seconds: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS; None for
    no limit (0, UNLIMITED, INFINITE). ValueError for anything else."""
    value = text.strip()
    if value.upper() in ("0", "UNLIMITED", "INFINITE"):
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not match:
        raise ValueError(text)
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        return int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    if third is not None:  # HH:MM:SS
        return int(first) * 3600 + int(second) * 60 + int(third)
    return int(first) * 60 + int(second or 0)  # minutes[:seconds]


@dataclass
class ArrayJob:
    """What the script asks of Slurm and what each task runs."""

    study_name: str
    storage_shown: str  # the store's URL with its password hidden (a comment in the script)
    tasks: int
    python: str
    argv: list[str]  # after the interpreter: `worker_argv`
    workdir: str
    job_name: str
    time: str | None = None
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None
    max_running: int | None = None
    signal_lead: int = DEFAULT_SIGNAL_LEAD_S
    requeue: bool = False
    extra: list[str] = field(default_factory=list)  # more #SBATCH options, as given

    def directives(self) -> list[str]:
        options = [f"--job-name={self.job_name}",
                   f"--array=0-{self.tasks - 1}" + (f"%{self.max_running}" if self.max_running else ""),
                   "--ntasks=1",
                   *([f"--cpus-per-task={self.cpus_per_task}"] if self.cpus_per_task else []),
                   *([f"--mem={self.mem}"] if self.mem else []),
                   *([f"--gpus-per-task={self.gpus_per_task}"] if self.gpus_per_task else []),
                   *([f"--time={self.time}"] if self.time else []),
                   *([f"--partition={self.partition}"] if self.partition else []),
                   f"--signal=B:USR1@{self.signal_lead}",
                   *(["--requeue"] if self.requeue else []),
                   "--open-mode=append",  # a requeued task appends to its output file, slurm-<job>_<task>.out
                   f"--chdir={self.workdir}",
                   *self.extra]
        return [f"#SBATCH {shlex.quote(option)}" for option in options]

    def script(self) -> str:
        worker = shlex.join([self.python, *self.argv])
        requeue = ('elif [ "$stop" = USR1 ] && [ "$code" -eq 143 ]; then\n'
                   '  # warned of the time limit (--requeue): back in the queue, to join the study again\n'
                   '  scontrol requeue "$SLURM_JOB_ID"\n') if self.requeue else ""
        workers = f"{self.tasks} sweep worker{'s' if self.tasks > 1 else ''}"
        return f"""#!/bin/bash
# A Slurm job array of {workers} for study {self.study_name!r}, written by `sweeps slurm`:
# each task runs one worker on the shared store; the workers share the study's trials.
{chr(10).join(self.directives())}

# The store, from $SWEEPS_STORAGE, which sbatch passes on from `sweeps slurm` (its URL is never
# written here, where a password would be kept):
#   {self.storage_shown}
if [ -z "${{{ENV_VAR}:-}}" ]; then
  echo "error: \\${ENV_VAR} is not set: submit with sweeps slurm, or export the store's URL before sbatch" >&2
  exit {exits.USAGE}
fi
export OMP_NUM_THREADS="${{SLURM_CPUS_PER_TASK:-1}}"  # the cores Slurm gave the task, not all the node's
export PYTHONUNBUFFERED=1

# USR1: Slurm's warning, {self.signal_lead} s before the time limit; TERM: scancel or preemption. Either
# way the worker fails its open trials, queues them again for the other tasks, and exits {exits.TERMINATED}.
stop=""
worker=""
on_signal() {{ stop=$1; if [ -n "$worker" ]; then kill -TERM "$worker" 2>/dev/null; fi; }}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM
{worker} &
worker=$!
if [ -n "$stop" ]; then kill -TERM "$worker" 2>/dev/null; fi
wait "$worker"; code=$?
while kill -0 "$worker" 2>/dev/null; do wait "$worker"; code=$?; done  # a signal interrupts wait

if [ "$code" -eq 0 ]; then
  # the study is done: the array's tasks still pending have nothing left to do
  scancel --state=PENDING "${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}" 2>/dev/null || true
{requeue}fi
exit "$code"
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sweeps slurm",
        description="Run the study's workers as one Slurm job array on a shared (PostgreSQL) store: "
                    "write the batch script and submit it with sbatch.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--array", type=int, required=True, metavar="N",
                        help="tasks in the array, one worker each")
    parser.add_argument("--n-trials", type=int, help="total finished trials for the study (passed to every task)")
    parser.add_argument("--gpus-per-task", type=int, default=0, metavar="G",
                        help="GPUs per task (default 0); each worker uses those Slurm gives it, and with G > 1 "
                             "runs one worker process per GPU")
    parser.add_argument("--cpus-per-task", type=int, metavar="C",
                        help="CPU cores per task (Slurm's default: 1); PyTorch gets as many threads")
    parser.add_argument("--mem", metavar="M", help="memory per node of a task, as sbatch --mem takes it (e.g. 8G)")
    parser.add_argument("--time", metavar="T", help="each task's time limit, as sbatch --time takes it "
                                                    "(minutes, HH:MM:SS, D-HH:MM...; default the partition's)")
    parser.add_argument("--partition", metavar="P", help="the partition to run in (default the cluster's)")
    parser.add_argument("--max-running", type=int, metavar="K",
                        help="at most K tasks of the array at once (sbatch --array=0-N%%K)")
    parser.add_argument("--signal-lead", type=int, default=DEFAULT_SIGNAL_LEAD_S, metavar="S",
                        help="seconds before the time limit at which a task's worker is told to stop: it fails "
                             f"its open trial and queues it again (default {DEFAULT_SIGNAL_LEAD_S}; Slurm may "
                             "send it up to a minute earlier)")
    parser.add_argument("--requeue", action="store_true",
                        help="a task told of its time limit puts itself back in the queue (scontrol requeue), "
                             "and Slurm may requeue a preempted task")
    parser.add_argument("--job-name", help="the job's name (default sweeps-<study name>)")
    parser.add_argument("--sbatch-option", action="append", default=[], metavar="OPTION", dest="sbatch_options",
                        help="one more sbatch option for the script, e.g. --sbatch-option=--account=lab "
                             "(repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the batch script; submit nothing, touch no store")
    parser.add_argument("--wait", action="store_true",
                        help="after submitting, show the study's progress with the array's tasks until none is "
                             "left in the queue; exit as sweeps run does")
    parser.add_argument("--quiet", action="store_true", help="with --wait: no progress display")
    add_override_argument(parser, "recorded with the study and passed on to every task")
    changed = parser.add_mutually_exclusive_group()
    changed.add_argument(NEW_STUDY_FLAG, metavar="NAME", dest="new_study",
                         help="run the study file as a new study NAME in the same store (when the stored "
                              "study searched something else); the tasks run it under that name")
    changed.add_argument(ALLOW_CHANGES_FLAG, action="store_true", dest="allow_changes",
                         help="carry on with a study file whose search differs from the stored study's; the "
                              "change is recorded with the study before the tasks start")
    return parser.parse_args(argv)


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags themselves, in one line with the fix; None when nothing."""
    if args.array < 1:
        return f"--array must be >= 1 (got {args.array}): the number of tasks, one worker each"
    for flag, value, low in (("--n-trials", args.n_trials, 1), ("--gpus-per-task", args.gpus_per_task, 0),
                             ("--cpus-per-task", args.cpus_per_task, 1), ("--max-running", args.max_running, 1)):
        if value is not None and value < low:
            return f"{flag} must be >= {low} (got {value})"
    if not 1 <= args.signal_lead <= MAX_SIGNAL_LEAD_S:
        return f"--signal-lead must be between 1 and {MAX_SIGNAL_LEAD_S} seconds (got {args.signal_lead})"
    if args.time is not None:
        try:
            limit = slurm_seconds(args.time)
        except ValueError:
            return (f"--time {args.time!r} is not a Slurm time: give minutes, HH:MM:SS or D-HH:MM:SS "
                    "(e.g. --time 30 or --time 4:00:00)")
        if limit is not None and limit <= args.signal_lead:
            return (f"--time {args.time} ({limit} s) is not longer than --signal-lead {args.signal_lead} s: a task "
                    "would be told to stop as it starts; give a longer --time or a shorter --signal-lead")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if problem := usage_problem(args):
        return fail(exits.USAGE, problem)
    return run_command(lambda: submit_array(args), args.study_file)


def server_store_problem(url: str) -> str | None:
    if make_url(url).get_backend_name() == "sqlite":
        return (f"the store is a SQLite file ({redact(url)}), which the array's tasks on other nodes cannot share: "
                f"pass --storage postgresql+psycopg://USER@HOST:5432/DB (or set ${ENV_VAR}) to a server they reach")
    return None


def array_job(args: argparse.Namespace, study_name: str, url: str) -> ArrayJob:
    argv = worker_argv(os.path.abspath(args.study_file), args.sets, args.new_study or args.study_name, args.n_trials)
    if args.gpus_per_task > 1:
        argv += ["--gpus", "all"]  # one worker process per GPU of the task
    return ArrayJob(study_name=study_name, storage_shown=redact(url), tasks=args.array, python=sys.executable,
                    argv=argv, workdir=os.getcwd(), job_name=args.job_name or f"sweeps-{study_name}",
                    time=args.time, partition=args.partition, gpus_per_task=args.gpus_per_task,
                    cpus_per_task=args.cpus_per_task, mem=args.mem, max_running=args.max_running,
                    signal_lead=args.signal_lead, requeue=args.requeue, extra=list(args.sbatch_options))


def submit_array(args: argparse.Namespace) -> int:
    config = load_config(args.study_file, overrides=args.sets)
    target = target_of(config, args.storage, args.study_name, args.n_trials)
    if args.new_study:  # the same store, found as before; only the study's name is new
        target = replace(target, study_name=args.new_study)
    if problem := server_store_problem(target.storage_url):
        return fail(exits.USAGE, problem)
    job = array_job(args, target.study_name, target.storage_url)
    sbatch = shutil.which("sbatch")
    if sbatch is None and not args.dry_run:
        return fail(exits.USAGE, "sbatch not found on the PATH: run sweeps slurm where Slurm's commands are "
                                 "(a login node), or print the script with --dry-run")
    task = load_task(config)
    check_plan(config, task.n_train, task.tokens_per_example)
    if args.dry_run:
        print(job.script(), end="")
        return exits.OK
    # once, before the tasks race for it; a changed search is refused here, or recorded (--allow-changes),
    # so the tasks find the study's search as the file has it
    study = open_study(config, target, task.n_train, overrides=args.sets,
                       changes="allow" if args.allow_changes else "check")
    if finished_count(study) >= target.n_trials:  # nothing left to do: submit nothing
        print(complete_note(finished_count(study), target.n_trials))
        return end_sweep(study, target.n_trials, config)
    done = subprocess.run([sbatch, "--parsable"], input=job.script(), capture_output=True, text=True,
                          env={**os.environ, ENV_VAR: target.storage_url})
    if done.returncode != 0:
        reason = " ".join(done.stderr.split()) or f"exit code {done.returncode}"
        return fail(exits.FAILED, f"sbatch refused the job array: {reason}")
    job_id = done.stdout.strip().split(";")[0]
    print(f"submitted job array {job_id}: {job.tasks} task{'s' if job.tasks > 1 else ''}, each a worker of study "
          f"{target.study_name!r} "
          f"on {redact(target.storage_url)}\n"
          f"  squeue -j {job_id}   # its tasks; each writes to slurm-{job_id}_<task>.out\n"
          f"  sweeps studies {shlex.quote(args.study_file)} --workers   # the study's workers (on the same "
          f"--storage or ${ENV_VAR})\n"
          f"  scancel {job_id}   # stops them: their open trials are queued again", flush=True)
    if not args.wait:
        return exits.OK
    return wait_for_array(study, config, target, job_id, not args.quiet)


def queued(job_id: str) -> Counter | None:
    """The array's tasks still in the queue, counted by state (RUNNING, PENDING, ...); None when
    squeue cannot say (the controller is out of reach). A job that has left the queue is empty."""
    try:
        done = subprocess.run(["squeue", "--noheader", "--array", "--jobs", job_id, "--format", "%T"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return Counter() if "Invalid job id" in done.stderr else None
    return Counter(line.strip() for line in done.stdout.splitlines() if line.strip())


def array_text(job_id: str, counts: Counter | None, registered: int) -> str:
    if counts is None:
        return f"array {job_id}: squeue does not answer"
    states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"array {job_id}: {states or 'none queued'}; {registered} registered"


def wait_for_array(study: optuna.Study, config: SweepConfig, target: SweepTarget, job_id: str,
                   show_progress: bool) -> int:
    """Show the study's progress with the array's tasks until none is left in the queue; then the
    array's workers, the summary and the study's ending."""
    engine = engine_of(study_storage(study))
    label = f"[slurm {job_id}_"
    state: dict[str, Counter | None] = {"counts": None}

    def tasks_text() -> str:
        ours = sum(label in (w["host"] or "") for w in registered_workers(engine, study_id_of(study)))
        return array_text(job_id, state["counts"], ours)

    progress = (WorkersProgress(study, target.n_trials, budget_of(config), config.study.metric,
                                ledger=line_of(study) if config.study.total_budget else None,
                                per_trial=config.planned_per_trial(), workers=tasks_text)
                if show_progress else None)
    try:
        while True:
            state["counts"] = queued(job_id)
            if state["counts"] is not None and not state["counts"]:
                break
            if progress:
                progress()
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        if progress:
            progress.close()
        return fail(exits.INTERRUPTED, f"stopped waiting; the array runs on (squeue -j {job_id}; scancel "
                                       f"{job_id} stops it, and its open trials are queued again)")
    if progress:
        progress()
        progress.close()
    rows = worker_rows(engine, study_id_of(study), study.get_trials(deepcopy=False), host_has=label)
    print(f"workers of array {job_id}: {len(rows) or 'none registered'}")
    if rows:
        print(workers_table(rows))
    return end_sweep(study, target.n_trials, config)


if __name__ == "__main__":
    sys.exit(main())
