"""The overhead benchmark's replay: each finished trial, trained again alone, runs as it ran in the sweep."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "overhead.py"
spec = importlib.util.spec_from_file_location("overhead", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up
spec.loader.exec_module(bench)


def test_replay_stops_pruned_trials_where_the_sweep_pruned_them(tmp_path):
    config = bench.service_config(tmp_path, n_trials=6, examples=4000, seed=0)
    service, study = bench.service_sweep(config)
    assert service.pruned >= 1  # the case that needs the replay to stop where the sweep stopped
    inside, examples_seen = bench.replay(config, study)  # raises when a trial replays other updates
    assert examples_seen == service.examples and inside > 0
