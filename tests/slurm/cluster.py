"""A one-node Slurm cluster on this machine for tests/test_slurm.py: Debian's slurm-wlm 22.05
(slurmctld, slurmd) and munge, started as root from a temporary folder and stopped by their
process ids.

What it takes (found on a Debian 12 CI host, no systemd, no cgroups):
- a config file of its own, named by $SLURM_CONF for every command (sbatch, squeue, scancel and
  the daemons), with its own ports and state folders, so a system Slurm is left alone;
- `ProctrackType=proctrack/linuxproc` and `TaskPlugin=task/none`: no cgroups needed;
- the node named by its short host name (what slurmd calls itself) at 127.0.0.1, with the CPUs
  and memory `slurmd -C` reports (a node that claims more is drained);
- munged with a key and a socket of its own, in the foreground, `--force` (as root);
- `OverSubscribe=FORCE:4` on the partition, so the 4 tasks of an array run at once on 2 cores;
- `cred_expire=10` (Slurm's default: 120 s), the delay before a requeued job may start again, and
  `sched_interval=2`, how often the scheduler looks at jobs that became eligible;
- `KillWait=10`: seconds between a cancelled or timed-out task's SIGTERM and its SIGKILL.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, *COMMANDS) if shutil.which(name) is None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_line() -> str:
    """`NodeName=HOST CPUs=... RealMemory=...` as slurmd sees this machine."""
    done = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("NodeName="))
    return f"{line} NodeAddr=127.0.0.1 State=UNKNOWN"


def config_text(folder: Path, node: str) -> str:
    host = node.split()[0].split("=", 1)[1]
    return f"""\
ClusterName=sweepstest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
KillWait=10
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
{node}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


class Cluster:
    """The daemons, started in `folder`; `env` is what every Slurm command needs ($SLURM_CONF)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen] = []

    def start(self, timeout: float = 60) -> None:
        folder = self.folder
        for sub in ("state", "spool"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        key = folder / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        self.conf.write_text(config_text(folder, node_line()))
        self.launch(["munged", "--foreground", "--force", f"--socket={folder}/munge.socket", f"--key-file={key}",
                     f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                     f"--seed-file={folder}/munged.seed"], "munged")
        self.wait_for("munged's socket", lambda: (folder / "munge.socket").exists(), 20)
        self.launch(["slurmctld", "-D", "-i"], "slurmctld")
        self.launch(["slurmd", "-D"], "slurmd")
        self.wait_for("the node to be idle", lambda: self.node_state() == "idle", timeout)

    def launch(self, command: list[str], name: str) -> None:
        with open(self.folder / f"{name}.out", "ab") as out:
            self.daemons.append(subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True))

    def node_state(self) -> str:
        self.check_daemons()
        done = self.run(["sinfo", "--noheader", "--format=%t"], check=False)
        return done.stdout.strip()

    def check_daemons(self) -> None:
        for daemon in self.daemons:
            if daemon.poll() is not None:
                raise RuntimeError(f"{daemon.args[0]} exited with {daemon.returncode}:\n{self.logs()}")

    def logs(self, lines: int = 15) -> str:
        parts = []
        for path in sorted(self.folder.glob("*.log")) + sorted(self.folder.glob("*.out")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def run(self, command: list[str], check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **kwargs.pop("env", {})}, **kwargs)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def queued(self, job: str) -> list[str]:
        """`TASK STATE` per task of the job still in the queue."""
        done = self.run(["squeue", "--noheader", "--array", "--jobs", job, "--format=%i %T"], check=False)
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]

    def wait_for(self, what: str, check: Callable[[], object], timeout: float, every: float = 0.5) -> object:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")
            time.sleep(every)

    def stop(self) -> None:
        """Cancel every job left, then stop the daemons by their process ids (slurmd, slurmctld, munged)."""
        try:
            if all(d.poll() is None for d in self.daemons) and len(self.daemons) == len(DAEMONS):
                self.run(["scancel", "--full", f"--user={os.getuid()}"], check=False)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.run(["squeue", "--noheader"], check=False).stdout.strip():
                    time.sleep(0.5)
        finally:
            for daemon in reversed(self.daemons):
                if daemon.poll() is None:
                    os.kill(daemon.pid, signal.SIGTERM)
                    try:
                        daemon.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        os.kill(daemon.pid, signal.SIGKILL)
                        daemon.wait(timeout=15)
