"""`python -m sweeps.dashboard` over HTTP on a real sweep's study, and headless Chromium on its page."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch

from storage.optuna_private import study_id_of
from sweeps import dashboard
from sweeps.screenshot import find_chromium, headless
from sweeps.trial.checkpoints import kept_checkpoints
from tests.dashboard_study import make_study

ROOT = Path(__file__).resolve().parents[1]
ATTRS = {"batch_size", "lr", "coupling", "iterations_per_epoch", "planned_updates", "updates", "examples_seen",
         "epochs_completed", "train_seconds", "examples_per_second", "stop_reason", "best_step", "seed", "n_train",
         "device"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real sweep's study served by `python -m sweeps.dashboard` on a free localhost port."""
    study_file = make_study(tmp_path_factory.mktemp("dashboard"))
    port = free_port()
    log = study_file.parent / "dashboard.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "sweeps.dashboard", str(study_file), "--port", str(port)],
                                  cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(base + "/api/meta", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the dashboard did not start: {log.read_text()}") from None
                time.sleep(0.2)
        yield study_file, base, log
    finally:
        server.terminate()
        server.wait(timeout=10)


def the_study(study_file: Path) -> optuna.Study:
    return optuna.load_study(study_name="digits-small", storage=f"sqlite:///{study_file.parent / 'small.db'}")


def test_http_api_returns_trials_with_curves_attrs_notes_and_plots(served):
    study_file, base, log = served
    assert "127.0.0.1" in log.read_text() and "warning" not in log.read_text()
    meta = json.loads(get(base + "/api/meta"))
    assert meta["artifact_is_available"], "the artifact store is passed to the server"
    summaries = json.loads(get(base + "/api/studies"))["study_summaries"]
    (summary,) = [s for s in summaries if s["study_name"] == "digits-small"]
    detail = json.loads(get(f"{base}/api/studies/{summary['study_id']}?after=0"))
    study = the_study(study_file)
    assert len(detail["trials"]) == len(study.trials) == 12
    for served_trial, trial in zip(detail["trials"], study.trials):
        assert served_trial["number"] == trial.number
        curve = {v["step"]: v["value"] for v in served_trial["intermediate_values"]}
        assert curve == pytest.approx(trial.intermediate_values) and curve
        attrs = {a["key"]: a["value"] for a in served_trial["user_attrs"]}
        assert ATTRS <= set(attrs)
        assert attrs["batch_size"] == str(trial.user_attrs["batch_size"])
        assert f"## Trial {trial.number}" in served_trial["note"]["body"]
    assert "Plan of the budget" in detail["note"]["body"]
    assert detail["objective_names"] == ["val_accuracy"]
    plots = {p["id"] for p in detail["plotly_graph_objects"]}
    assert {"sweeps-lr-scaling", "sweeps-learning-curves", "sweeps-steps-to-target"} <= plots


def test_dashboard_lists_and_serves_the_best_checkpoints(served):
    study_file, base, _ = served
    study = the_study(study_file)
    kept = kept_checkpoints(study)
    assert len(kept) == 3
    detail = json.loads(get(f"{base}/api/studies/{study_id_of(study)}?after=0"))
    listed = {a["artifact_id"]: t for t in detail["trials"] for a in t["artifacts"]}
    assert set(listed) == {k.artifact_id for k in kept}
    best = kept[0]
    assert listed[best.artifact_id]["number"] == best.number == study.best_trial.number
    data = get(f"{base}/artifacts/{study_id_of(study)}/{best.trial_id}/{best.artifact_id}")
    checkpoint = torch.load(io.BytesIO(data))
    assert checkpoint["trial"] == best.number and checkpoint["value"] == study.best_value
    assert "0.weight" in checkpoint["state_dict"]


def test_binds_localhost_by_default_and_warns_otherwise(served, monkeypatch, capsys):
    import optuna_dashboard

    study_file = served[0]
    calls = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: calls.append(kw))
    assert dashboard.main([str(study_file), "--port", "9"]) == 0
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["artifact_store"] is not None
    assert "warning" not in capsys.readouterr().err
    assert dashboard.main([str(study_file), "--host", "0.0.0.0", "--port", "9"]) == 0
    assert calls[-1]["host"] == "0.0.0.0"
    assert "no authentication" in capsys.readouterr().err


def test_missing_store_or_study_is_a_clear_message(tmp_path):
    (tmp_path / "s.yaml").write_text(served_yaml(tmp_path, "sqlite:///none.db"))
    done = subprocess.run([sys.executable, "-m", "sweeps.dashboard", str(tmp_path / "s.yaml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and "no store at" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "none.db").exists()


def served_yaml(folder: Path, storage: str) -> str:
    from tests.dashboard_study import STUDY

    return json.dumps({**STUDY, "study": {**STUDY["study"], "storage": storage}})


def text_of(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_headless_chromium_shows_the_study_and_its_trials(served, tmp_path):
    if find_chromium() is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("Chromium is missing on CI: .ci/run installs Debian's chromium package")
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    study_file, base, _ = served
    study = the_study(study_file)
    page = f"{base}/dashboard/studies/{study_id_of(study)}"
    text = text_of(headless(page, dump_dom=True))
    assert "digits-small" in text and "History" in text
    assert f"Best Trial (number={study.best_trial.number})" in text

    text = text_of(headless(f"{page}/trials?numbers={study.best_trial.number}", dump_dom=True))
    assert f"{len(study.trials)} Trials" in text
    for t in study.trials:
        assert f"Trial {t.number} " in text
    assert f"Trial {study.best_trial.number}: complete" in text, "the trial's note is rendered"
    assert "trial-" in text and "-best.pt" in text, "its checkpoint is listed"

    shot = Path(os.environ.get("SWEEPS_SCREENSHOT_DIR", tmp_path)) / "dashboard-test.png"
    headless(page, screenshot=shot)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
