"""sweeps.text: the one table renderer and the number formats every command's text uses, and the
one progress summary `sweeps run` prints alone and as the parent of --workers."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from datetime import datetime, timezone

import optuna
import pytest

from objectives.training.budget import Budget
from sweeps.loop.progress import Progress, StudyState, finished_text, study_summary
from sweeps.loop.workers_progress import WorkersProgress, running_text
from sweeps.text import (
    column_format,
    duration,
    emit_json,
    human,
    indented,
    number,
    percent,
    plain,
    quantity,
    table,
    timestamp,
)
from tests.conftest import REPO

ROWS = [{"name": "a", "value": 0.123456, "count": 3, "missing": None},
        {"name": "longer", "value": 12.0, "count": 1200, "missing": "x"}]


def test_a_table_aligns_right_under_its_header_with_a_dash_for_none():
    assert table(ROWS).splitlines() == [
        "  name   value  count  missing",
        "     a  0.1235      3        -",
        "longer      12   1200        x",
    ]


def test_columns_named_left_align_left_and_no_line_ends_in_spaces():
    lines = table(ROWS, left=("name", "missing")).splitlines()
    assert lines == [
        "name     value  count  missing",
        "a       0.1235      3  -",
        "longer      12   1200  x",
    ]
    assert not any(line != line.rstrip() for line in lines)


def test_a_column_format_writes_that_columns_cells():
    assert table(ROWS, formats={"value": lambda v: f"{v:.1f}"}).splitlines()[1:] == [
        "     a    0.1      3        -",
        "longer   12.0   1200        x",
    ]
    assert indented("a\nb") == "  a\n  b"


def test_the_studies_table_keeps_its_layout():
    """`sweeps studies`: the study name to the left, the figures to the right (as before the module)."""
    rows = [{"study": "tiny", "direction": "minimize", "complete": 3, "best": "0.324846"},
            {"study": "a-longer-name", "direction": "maximize", "complete": 12, "best": "-"}]
    assert table(rows, left=("study",)).splitlines() == [
        "study          direction  complete      best",
        "tiny            minimize         3  0.324846",
        "a-longer-name   maximize        12         -",
    ]


@pytest.mark.parametrize(("value", "text"), [(0.123456, "0.1235"), (12.0, "12"), (1e-5, "1e-05"), (3, "3"),
                                             ("wsd", "wsd"), (None, "-"), (True, "True")])
def test_number(value, text):
    assert number(value) == text


@pytest.mark.parametrize(("value", "text"), [(0, "0"), (999.4, "999.4"), (1000, "1.00k"), (1234.5, "1.23k"),
                                             (4e6, "4.00M"), (2.5e9, "2.50G"), (-1500, "-1.50k")])
def test_human(value, text):
    assert human(value) == text


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.4, "59s"), (59.6, "1m00s"), (245, "4m05s"),
                                               (3599, "59m59s"), (3600, "1h00m"), (11220, "3h07m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_percent():
    assert percent(31, 100) == "31%"
    assert percent(1, 3, decimals=1) == "33.3%"
    assert percent(5, 0) == "-", "a share of nothing is no share"


def test_quantity():
    assert quantity(3.928) == "3.928" and quantity(2000) == "2,000" and quantity(0.5) == "0.5"
    assert quantity(2e7) == "2.00e7" and quantity(9999.6) == "1.00e4" and quantity(9999.4) == "9,999"


def test_timestamp():
    assert timestamp(datetime(2026, 12, 6, 1, 2, 3, 456)) == "2026-12-06 01:02:03"
    assert timestamp(None) == "-"


def test_column_format_lines_up_a_columns_decimals():
    as_text = column_format([2.5, 10.0])
    assert [as_text(2.5), as_text(10.0)] == ["2.5", "10.0"]
    assert column_format([1e-8])(1e-8) == "1.000e-08"
    assert column_format([16, 64])(16) == "16" and column_format([None])(None) == "-"


def test_json_is_strict_and_plain(capsys):
    emit_json({"best": float("nan"), "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "pair": (1, 2),
               "inf": -math.inf, "nested": {1: "one"}})
    document = json.loads(capsys.readouterr().out)
    assert document == {"best": None, "at": "2026-01-02T03:04:05+00:00", "pair": [1, 2], "inf": None,
                        "nested": {"1": "one"}}
    assert plain([float("inf"), 1.5]) == [None, 1.5]


# --- the one progress summary ------------------------------------------------------------------------


def test_the_summary_shows_spent_of_total_counts_best_and_eta():
    state = StudyState(complete=2, pruned=1, failed=1, spent=1500.0, best_value=0.25, best_trial=3)
    parts = study_summary(state, 5, 4000.0, "examples", "val_mse", 500.0, 245.0, 3600.0, ledger="L", workers="W")
    assert parts == {"counts": "3/5 done: 2 complete, 1 pruned, 1 failed", "best": "best val_mse 0.2500 (trial 3)",
                     "budget": "budget 2.00k/4.00k examples (50%)", "ledger": "L", "workers": "W",
                     "eta": "ETA 4m05s", "time": "1h00m"}
    bare = study_summary(StudyState(), 2, 80.0, "updates", "acc", 0.0, None, 1.0)
    assert list(bare) == ["counts", "best", "budget", "eta", "time"], "no ledger, no workers: no parts for them"
    assert bare["best"] == "best acc -" and bare["eta"] == "ETA -" and bare["budget"] == "budget 0/80 updates (0%)"


def test_alone_and_with_workers_the_summary_is_the_same(tmp_path):
    """The drift the two summaries had: with --workers the budget read `budget 0% of 80 updates`,
    alone `budget 0/80 updates (0%)`; both now come from `study_summary`."""
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    budget = Budget("updates", 40, 10)
    alone = Progress(2, budget, "val_mse", stream=io.StringIO())
    alone.refresh(study)
    workers_stream = io.StringIO()
    workers = WorkersProgress(study, 2, budget, "val_mse", stream=workers_stream)
    workers()  # the first poll: the study's earlier trials are not news
    study.tell(study.ask({"base_lr": optuna.distributions.FloatDistribution(0.01, 0.1)}), 0.5)
    alone.refresh(study)
    workers()
    line = workers_stream.getvalue().splitlines()[-1]
    shown = alone.summary(alone.started, None)
    for name in ("counts", "best", "budget"):
        assert f" | {shown[name]} | " in line, (name, line)
    assert shown["budget"] == "budget 0/80 updates (0%)"


def test_a_trial_is_named_the_same_in_every_progress_line():
    trial = optuna.trial.create_trial(params={"batch_size": 16, "base_lr": 0.05},
                                      distributions={"batch_size": optuna.distributions.CategoricalDistribution([16]),
                                                     "base_lr": optuna.distributions.FloatDistribution(0.01, 0.1)},
                                      value=0.25)
    trial.number = 0
    assert finished_text(trial, "val_mse") == "trial 0 complete: val_mse 0.2500 (batch 16, lr 0.05)"
    trial.state = optuna.trial.TrialState.RUNNING
    assert running_text(trial, "val_mse", datetime.now(), None, None, None).startswith("trial 0 (batch 16, lr 0.05)")


def test_the_text_module_imports_nothing_of_the_project():
    """Any command may use it, the read-only ones included: it loads no torch, Optuna or sweep loop."""
    code = ("import sys, sweeps.text; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'optuna', 'objectives', 'storage') or m.startswith('sweeps.loop')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
