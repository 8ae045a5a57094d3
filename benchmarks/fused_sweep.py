"""A whole sweep with and without fusion (issue 26): the digits example (examples/digits.yaml),
the same study seeds, `objective.fuse` off against on, one worker each. Prints, per setting, the
best value of each seed's sweep, their median and standard deviation, and the wall time of each
sweep and in all; then whether the fused median is within one SD of the unfused one.

    python benchmarks/fused_sweep.py                              # 5 seeds, 40 trials, fuse auto
    python benchmarks/fused_sweep.py --trials 20 --fuse 8         # shorter; a fixed group size

Each sweep writes a fresh SQLite store in a temporary folder, and runs in this process as
`python -m sweeps.run examples/digits.yaml --quiet` would (the settings alternate seed by seed,
so a change in the machine's load falls on both).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.loop.runner import run_sweep

REPO = Path(__file__).resolve().parents[1]


def one_sweep(seed: int, fuse: str | int, trials: int, folder: Path) -> tuple[float, float]:
    """(best value, wall seconds) of the digits example under `seed` and `fuse`."""
    data = yaml.safe_load((REPO / "examples" / "digits.yaml").read_text())
    name = f"digits-{fuse}-{seed}"
    data["study"].update(name=name, seed=seed, n_trials=trials, storage=f"sqlite:///{folder / name}.db")
    data["objective"]["fuse"] = fuse
    data.setdefault("dashboard", {})["keep_checkpoints"] = 0
    config = parse_config(data, REPO / "examples")
    started = time.perf_counter()
    study = run_sweep(config, target_of(config), show_progress=False)
    return study.best_value, time.perf_counter() - started


def fuse_value(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--fuse", type=fuse_value, default="auto", help="the fused setting (auto or K)")
    args = parser.parse_args()
    settings = ["off", args.fuse]
    best: dict[str, list[float]] = {str(s): [] for s in settings}
    walls: dict[str, list[float]] = {str(s): [] for s in settings}
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.seeds):
            for setting in settings:
                value, wall = one_sweep(seed, setting, args.trials, Path(folder))
                best[str(setting)].append(value)
                walls[str(setting)].append(wall)
                print(f"seed {seed} fuse {setting}: best {value:.4f} in {wall:.1f} s", flush=True)
    print(f"\ndigits example, {args.trials} trials per sweep, {args.seeds} seeds, one worker")
    for setting in settings:
        b, w = best[str(setting)], walls[str(setting)]
        sd = statistics.stdev(b) if len(b) > 1 else 0.0
        print(f"fuse {str(setting):>4}: median best {statistics.median(b):.4f}  SD {sd:.4f}  "
              f"wall median {statistics.median(w):.1f} s, total {sum(w):.1f} s")
    off, on = best["off"], best[str(args.fuse)]
    sd = statistics.stdev(off) if len(off) > 1 else 0.0
    gap = statistics.median(on) - statistics.median(off)
    print(f"fused median - unfused median: {gap:+.4f} ({'within' if abs(gap) <= sd else 'outside'} one unfused SD); "
          f"wall time fused / unfused: {sum(walls[str(args.fuse)]) / sum(walls['off']):.2f}")


if __name__ == "__main__":
    main()
