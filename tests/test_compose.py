"""docker-compose.yml, checked without a Docker engine: its structure here, and the compose tool's
own validation (Debian's docker-compose, which .ci/run installs) when it is present."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_postgres_is_healthy_checked_persistent_and_private():
    db = SERVICES["postgres"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert any(v.startswith("pgdata:") for v in db["volumes"]) and "pgdata" in COMPOSE["volumes"]
    assert "ports" not in db  # reachable on the compose network only


def test_credentials_come_from_the_environment_only():
    text = (REPO / "docker-compose.yml").read_text()
    for match in re.finditer(r"(POSTGRES_PASSWORD|POSTGRES_USER)\s*:\s*(\S+)", text):
        assert match.group(2).startswith("${"), match.group(0)
    assert "change-me" not in text
    example = (REPO / ".env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_dashboard_binds_to_localhost_only():
    ports = SERVICES["dashboard"]["ports"]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports)


@pytest.mark.parametrize("name", ["worker", "worker-gpu"])
def test_workers_wait_for_a_healthy_database_and_scale(name):
    worker = SERVICES[name]
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "container_name" not in worker  # --scale needs unnamed containers
    assert "ports" not in worker
    assert worker["build"]["context"] == "."
    assert worker["build"]["args"]["WHEELHOUSE"] == "${WHEELHOUSE:-}"  # unset: the package indexes, as before
    assert "@postgres:5432/" in worker["environment"]["SWEEPS_STORAGE"]
    assert worker["stop_grace_period"] == "15s"


def test_gpu_profile_is_one_container_per_machine_with_all_its_gpus():
    gpu = SERVICES["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["count"] == "all"
    assert gpu["command"][-2:] == ["--gpus", "all"]  # one worker process per GPU in the container
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX"]  # a CUDA build of torch
    assert "profiles" not in SERVICES["worker"]


def test_workers_and_dashboard_share_the_checkpoint_volume():
    for name in ("worker", "worker-gpu"):
        assert "artifacts:/app/artifacts" in SERVICES[name]["volumes"]
        assert SERVICES[name]["environment"]["SWEEPS_ARTIFACTS"] == "/app/artifacts"
    dashboard = SERVICES["dashboard"]
    assert any(v.startswith("artifacts:/app/artifacts") for v in dashboard["volumes"])
    assert dashboard["entrypoint"][dashboard["entrypoint"].index("--artifact-dir") + 1] == "/app/artifacts"
    assert "artifacts" in COMPOSE["volumes"]
    # The dashboard exits while the database has no tables yet; it must come back.
    assert dashboard["restart"] == "on-failure"


def test_dockerfile_runs_the_sweep_cli():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "sweeps.run"]' in dockerfile
    assert "torch==${TORCH_VERSION}" in dockerfile
    assert "\nARG WHEELHOUSE=\n" in dockerfile  # offline builds only when asked for


@pytest.mark.skipif(not shutil.which("docker-compose") and not os.environ.get("CI"),
                    reason="Debian's docker-compose validates the file; .ci/run installs it")
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"], ["--profile", "pooled"]])
def test_compose_tool_accepts_the_file(tmp_path, profile):
    env_file = tmp_path / ".env"
    env_file.write_text((REPO / ".env.example").read_text())
    done = subprocess.run(["docker-compose", "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yml"),
                           *profile, "config", "-q"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_pooled_profile_puts_pgbouncer_between_the_workers_and_postgres():
    """docker compose --profile pooled up --scale worker=0 --scale worker-pooled=64 (docs/many_workers.md)."""
    bouncer, worker = SERVICES["pgbouncer"], SERVICES["worker-pooled"]
    assert bouncer["profiles"] == worker["profiles"] == ["pooled"]
    assert bouncer["build"]["context"] == "." and bouncer["build"]["dockerfile"] == "deploy/pgbouncer/Dockerfile"
    assert bouncer["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "ports" not in bouncer and "ports" not in worker
    assert worker["depends_on"]["pgbouncer"]["condition"] == "service_healthy"
    url = worker["environment"]["SWEEPS_STORAGE"]
    assert "@pgbouncer:6432/" in url and url.endswith("?pooler=pgbouncer")
    assert worker["command"] == SERVICES["worker"]["command"] and worker["build"] == SERVICES["worker"]["build"]
    dockerfile = (REPO / bouncer["build"]["dockerfile"]).read_text()
    # the worker image's base (built locally: no registry), Debian's package, never run as root
    assert "FROM python:3.11-slim" in dockerfile and "pgbouncer" in dockerfile and "USER postgres" in dockerfile
    entrypoint = (REPO / "deploy/pgbouncer/entrypoint.sh").read_text()
    assert "pool_mode = transaction" in entrypoint and "max_db_connections = ${pool}" in entrypoint
    done = subprocess.run(["bash", "-n", str(REPO / "deploy/pgbouncer/entrypoint.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
