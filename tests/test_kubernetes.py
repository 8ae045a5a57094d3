"""deploy/kubernetes/, checked offline: every manifest against the Kubernetes API's schemas
(kubernetes-validate, which bundles them), and the security docker-compose.yml has: the store's
URL and the database's password from a Secret only, no database port outside the cluster, the
dashboard not exposed. The workers run the command the Slurm tests run (`sweeps.slurm.worker_argv`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate  # the test extra: the API schemas of each Kubernetes version, bundled
import pytest
import yaml

from sweeps.slurm import worker_argv

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "deploy" / "kubernetes"
FILES = sorted(p for p in FOLDER.glob("*.yaml") if p.name != "kustomization.yaml")
DOCUMENTS = [(path.name, doc) for path in FILES for doc in yaml.safe_load_all(path.read_text()) if doc]
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]  # the oldest Kubernetes still common, the newest


def resource(kind: str, name: str) -> dict:
    found = [doc for _, doc in DOCUMENTS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def secret_ref(container: dict, name: str) -> dict:
    env = {e["name"]: e for e in container["env"]}
    assert "value" not in env[name], f"{name} is written in the manifest"
    return env[name]["valueFrom"]["secretKeyRef"]


def test_the_folder_holds_the_deployment():
    assert [p.name for p in FILES] == ["artifacts.yaml", "dashboard.yaml", "postgres.yaml", "workers.yaml"]
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in DOCUMENTS)
    assert kinds == [("Deployment", "sweeps-dashboard"), ("Job", "sweeps-workers"), ("NetworkPolicy", "postgres"),
                     ("PersistentVolumeClaim", "sweeps-artifacts"), ("Service", "postgres"),
                     ("Service", "sweeps-dashboard"), ("StatefulSet", "postgres")]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("name", "doc"), DOCUMENTS, ids=[f"{n}:{d['kind']}" for n, d in DOCUMENTS])
def test_each_manifest_validates_against_the_kubernetes_schema(name, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError with the path


def test_workers_are_an_indexed_job_running_the_tested_worker_command_with_a_gpu_each():
    job = resource("Job", "sweeps-workers")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] >= 2
    (worker,) = containers(job)
    assert worker["command"] + worker["args"] == ["python", *worker_argv("examples/digits.yaml")]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert secret_ref(worker, "SWEEPS_STORAGE") == {"name": "sweeps-store", "key": "url"}
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never" and spec["terminationGracePeriodSeconds"] >= 15
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]}} in rules
    assert any(r["action"] == "Ignore" and r["onPodConditions"][0]["type"] == "DisruptionTarget" for r in rules)


def test_checkpoints_go_to_a_shared_volume_the_dashboard_reads():
    claim = resource("PersistentVolumeClaim", "sweeps-artifacts")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # workers on several nodes
    job, dashboard = resource("Job", "sweeps-workers"), resource("Deployment", "sweeps-dashboard")
    (worker,), (board,) = containers(job), containers(dashboard)
    assert {"name": "SWEEPS_ARTIFACTS", "value": "/app/artifacts"} in worker["env"]
    assert {"name": "artifacts", "mountPath": "/app/artifacts"} in worker["volumeMounts"]
    assert {"name": "artifacts", "mountPath": "/app/artifacts", "readOnly": True} in board["volumeMounts"]
    assert board["command"][board["command"].index("--artifact-dir") + 1] == "/app/artifacts"
    for doc in (job, dashboard):
        volumes = doc["spec"]["template"]["spec"]["volumes"]
        assert {"name": "artifacts", "persistentVolumeClaim": {"claimName": "sweeps-artifacts"}} in volumes


def test_the_database_is_private_and_its_password_comes_from_the_secret():
    service = resource("Service", "postgres")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    (db,) = containers(resource("StatefulSet", "postgres"))
    assert secret_ref(db, "POSTGRES_PASSWORD") == {"name": "sweeps-store", "key": "postgres-password"}
    policy = resource("NetworkPolicy", "postgres")
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of":
                                                                                      "sweeps"}}}]
    for _, doc in DOCUMENTS:  # nothing of the deployment is published outside the cluster
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
            assert not any("nodePort" in port for port in doc["spec"]["ports"])
        if "template" in doc["spec"]:
            pod = doc["spec"]["template"]["spec"]
            assert not pod.get("hostNetwork")
            assert not any("hostPort" in port for c in pod["containers"] for port in c.get("ports", []))
    text = "\n".join(path.read_text() for path in FILES)
    assert not re.search(r"://[^\s/:@]+:[^\s/@]+@", text)  # no URL with a password anywhere
    assert not any(doc["kind"] in ("Secret", "Ingress") for _, doc in DOCUMENTS)  # secrets are made by hand


def test_the_dashboard_is_reachable_inside_the_cluster_only():
    service = resource("Service", "sweeps-dashboard")
    assert service["spec"]["type"] == "ClusterIP"
    (board,) = containers(resource("Deployment", "sweeps-dashboard"))
    assert secret_ref(board, "SWEEPS_STORAGE") == {"name": "sweeps-store", "key": "url"}
    assert board["args"] == ["$(SWEEPS_STORAGE)"]


def test_every_pod_runs_as_a_user_without_privileges():
    for kind, name in (("Job", "sweeps-workers"), ("Deployment", "sweeps-dashboard"), ("StatefulSet", "postgres")):
        doc = resource(kind, name)
        assert doc["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"]}}


def test_the_image_runs_as_the_user_the_pods_name():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "useradd --create-home sweeper" in dockerfile and "\nWORKDIR /app\n" in dockerfile
    assert "COPY examples ./examples" in dockerfile  # the workers' study file, examples/digits.yaml


def test_kustomization_applies_every_manifest_with_the_image_named_once():
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in FILES]
    images = {image for _, doc in DOCUMENTS if "template" in doc["spec"]
              for c in containers(doc) + doc["spec"]["template"]["spec"].get("initContainers", [])
              for image in [c["image"]]}
    assert images == {"sweeps:latest", "postgres:16"} and kustomization["images"][0]["name"] == "sweeps"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders the kustomization (not needed on CI)")
def test_kubectl_kustomize_renders_the_deployment_with_your_image(tmp_path):
    folder = tmp_path / "kubernetes"
    shutil.copytree(FOLDER, folder)
    text = (folder / "kustomization.yaml").read_text()
    (folder / "kustomization.yaml").write_text(text.replace("newName: sweeps ", "newName: registry.example/sweeps ")
                                               .replace("newTag: latest", "newTag: '1'"))
    done = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert len(rendered) == len(DOCUMENTS)
    images = [c["image"] for doc in rendered if "template" in doc.get("spec", {})
              for c in containers(doc) + doc["spec"]["template"]["spec"].get("initContainers", [])]
    assert sorted(set(images)) == ["postgres:16", "registry.example/sweeps:1"]


@pytest.mark.skipif(not os.environ.get("SWEEPS_TEST_POSTGRES_URL"), reason="set SWEEPS_TEST_POSTGRES_URL")
def test_the_workers_wait_for_the_store_then_start():
    (wait,) = resource("Job", "sweeps-workers")["spec"]["template"]["spec"]["initContainers"]
    assert wait["command"][:2] == ["python", "-c"]
    assert secret_ref(wait, "SWEEPS_STORAGE") == {"name": "sweeps-store", "key": "url"}
    env = {**os.environ, "SWEEPS_STORAGE": os.environ["SWEEPS_TEST_POSTGRES_URL"]}
    done = subprocess.run([sys.executable, *wait["command"][1:]], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
