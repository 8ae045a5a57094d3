"""PgBouncer as a plain process for tests and benchmarks: Debian's `pgbouncer` started from a temporary
ini file on a free port, in transaction mode, in front of the PostgreSQL server of a URL, and stopped
by its pid. tests/pgbouncer_install.sh installs it (.ci/run runs that)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy.engine import make_url

RUN_AS = "postgres"  # PgBouncer refuses to run as root; started as root it switches to this user (-u)


def installed() -> bool:
    return shutil.which("pgbouncer") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgBouncer:
    """One PgBouncer in front of `server_url`'s server; `url` reaches the same database through it,
    with `?pooler=pgbouncer` and an application_name of its own, so PostgreSQL's pg_stat_activity
    tells its server connections apart."""

    def __init__(self, server_url: str, pool_size: int = 10, max_client_conn: int = 2000):
        server = make_url(server_url)
        self.database = server.database
        self.pool_size = pool_size
        self.port = free_port()
        self.application_name = f"sweeps-pgbouncer-{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="sweeps-pgbouncer-"))
        os.chmod(self.folder, 0o777)  # written by the user it runs as
        self.ini = self.folder / "pgbouncer.ini"
        self.log = self.folder / "pgbouncer.log"
        self.ini.write_text(
            "[databases]\n"
            f"{self.database} = host={server.host or '127.0.0.1'} port={server.port or 5432} "
            f"dbname={self.database} user={server.username or 'postgres'}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            "auth_type = any\npool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
            f"max_client_conn = {max_client_conn}\nmax_db_connections = {pool_size}\n"
            f"logfile = {self.log}\nadmin_users = {RUN_AS}\n"
            "server_reset_query =\nlog_connections = 0\nlog_disconnections = 0\n"
        )
        url = server.set(port=self.port, username=server.username or "postgres")
        self.url = url.update_query_dict({"pooler": "pgbouncer", "application_name": self.application_name}) \
            .render_as_string(hide_password=False)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        args = ["pgbouncer", *(["-u", RUN_AS] if os.geteuid() == 0 else []), str(self.ini)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.process.stderr.read().decode()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"pgbouncer did not listen on {self.port}")

    def stop(self) -> None:
        """SIGTERM (PgBouncer's immediate shutdown: its clients lose their connections) to its pid."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def server_connections(connection, application_name: str) -> int:
    """How many server connections PostgreSQL holds with that application_name (one SQLAlchemy connection
    to the server itself asks)."""
    from sqlalchemy import text
    return int(connection.execute(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                                  {"name": application_name}).scalar_one())
