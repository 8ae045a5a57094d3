"""Post hoc (docs/extrapolation.md, "After the run"): the expected metric of `sweeps predict` on
the small sweeps of benchmarks/extrapolation.py, rerun (deterministic: the same trials), against
the 3-seed means measured at 10 C_max in benchmarks/results/extrapolation.json.

    PYTHONPATH=. python benchmarks/extrapolation_metric_check.py
"""

from __future__ import annotations

import tempfile

from benchmarks.extrapolation import REACH, TASKS, Setting, sweep_data
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.errors import Refusal
from sweeps.loop.runner import run_sweep
from sweeps.results.frontier import frontier, predict


def main() -> None:
    for spec in TASKS.values():
        with tempfile.TemporaryDirectory() as folder:
            config = parse_config(sweep_data(spec, Setting(), folder), folder)
            trials = run_sweep(config, target_of(config), show_progress=False).get_trials(deepcopy=False)
            try:
                p = predict(frontier(trials, spec.maximize, seed=config.study.seed), REACH * spec.c_max)
            except Refusal as err:
                print(f"{spec.name}: refused: {err}")
                continue
            print(f"{spec.name}: expected {p.value:.4f} [{p.value_interval.low:.4f}, {p.value_interval.high:.4f}], "
                  f"batch size {p.batch_size:.1f}, lr {p.lr:.4g}")


if __name__ == "__main__":
    main()
