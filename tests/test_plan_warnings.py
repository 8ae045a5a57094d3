"""The dry run warns: search ranges the budget makes inert, adam_sqrt's betas and eps, and one
number format per column."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from sweeps.config.plan import plan_warnings
from sweeps.run import main
from sweeps.text import column_format
from tests.conftest import TINY, merged

REPO = Path(__file__).resolve().parents[1]


def dry_run(folder: Path, capsys, **overrides) -> str:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(merged(TINY, overrides)))
    assert main([str(path), "--dry-run"]) == 0
    return capsys.readouterr().out


def table(out: str) -> tuple[list[str], list[list[str]]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["batch_size"])
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(line.split())
    return lines[start].split(), rows


def test_the_digits_example_warns_that_a_third_of_its_epochs_do_nothing(tmp_path, capsys):
    shutil.copy(REPO / "examples" / "digits.yaml", tmp_path / "digits.yaml")
    assert main([str(tmp_path / "digits.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "search.epochs: 42-60 (19 of 60 values) never take effect" in warnings[0]
    assert "41.7 epochs at most (batch size 16)" in warnings[0] and "lower search.epochs.high to 42" in warnings[0]


def test_epochs_within_the_budget_warn_nothing_and_a_list_names_its_values(tmp_path, capsys):
    # 40 updates: 2.5 epochs at B=16 (16 per epoch), 10 at B=64 (4 per epoch)
    assert "warning" not in dry_run(tmp_path, capsys, search={"epochs": {"low": 1, "high": 10}})
    out = dry_run(tmp_path, capsys, search={"epochs": [2, 10, 20, 40]})
    assert "warning: search.epochs: 10, 20, 40 (3 of 4 values) never take effect" in out
    assert "keep one value of them, e.g. 10" in out


def test_a_warmup_range_too_short_for_one_update_warns(tiny_config):
    # at most 40 updates: a fraction below 0.5 / 40 = 0.0125 rounds to no warmup update anywhere
    config = tiny_config(search={"warmup_fraction": {"low": 0.0, "high": 0.05}})
    [warning] = plan_warnings(config, n_train=256)
    assert warning.startswith("search.warmup_fraction: 0-0.0125 (25% of the range) never takes effect")
    assert plan_warnings(tiny_config(search={"warmup_fraction": {"low": 0.0, "high": 0.5}}), n_train=256) == []
    timed = tiny_config(budget={"unit": "seconds", "per_trial": 1, "eval_every": 0.5},
                        search={"warmup_fraction": {"low": 0.0, "high": 0.05}, "epochs": [1, 50, 60]})
    assert plan_warnings(timed, n_train=256) == []  # a seconds budget's updates are unknown before it runs


def test_adam_sqrt_shows_the_adjusted_betas_and_eps(tmp_path, capsys):
    out = dry_run(tmp_path, capsys, objective={"optimizer": "adam", "betas": [0.9, 0.99], "eps": 1e-6},
                  search={"coupling": ["none", "adam_sqrt"], "batch_size": [16, 64]})
    assert "adam_sqrt also rescales Adam's betas and eps, with k = B / 16" in out
    header, rows = table(out)
    by_batch = {row[0]: dict(zip(header, row)) for row in rows}
    # k = 4: 1 - beta times 4, eps / 2
    assert (by_batch["64"]["beta1_adam_sqrt"], by_batch["64"]["beta2_adam_sqrt"]) == ("0.6", "0.96")
    assert by_batch["64"]["eps_adam_sqrt"] == "5.000e-07"
    assert (by_batch["16"]["beta1_adam_sqrt"], by_batch["16"]["eps_adam_sqrt"]) == ("0.9", "1.000e-06")
    assert "beta1_adam_sqrt" not in dry_run(tmp_path, capsys, search={"coupling": ["none", "sqrt"]})


def test_every_column_of_the_plan_keeps_one_number_format(tmp_path, capsys):
    shutil.copy(REPO / "examples" / "digits.yaml", tmp_path / "digits.yaml")
    assert main([str(tmp_path / "digits.yaml"), "--dry-run"]) == 0
    header, rows = table(capsys.readouterr().out)
    for i, column in enumerate(header):
        shapes = {("e" in row[i], len(row[i].partition(".")[2]) if "e" not in row[i] else 0) for row in rows}
        assert len(shapes) == 1, f"{column}: {[row[i] for row in rows]}"
    assert [row[header.index("epochs")] for row in rows] == ["41.72", "41.71", "41.70", "41.67", "41.67", "41.67"]


def test_column_format_picks_the_decimals_its_most_precise_value_needs():
    as_text = column_format([2.5, 10.0])
    assert [as_text(v) for v in (2.5, 10.0)] == ["2.5", "10.0"]
    tiny = column_format([1e-8, 7.0710678e-9])
    assert re.fullmatch(r"7\.071e-09", tiny(7.0710678e-9))
    assert column_format([16, 64])(16) == "16" and column_format(["timed"])("timed") == "timed"
