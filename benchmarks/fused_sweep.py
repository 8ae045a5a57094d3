"""A whole sweep with and without fusion (issue 26): the digits example (examples/digits.yaml),
the same study seeds, `objective.fuse` off against on, one worker each. Prints, per setting, the
best value of each seed's sweep, their median and standard deviation, and the wall time of each
sweep and in all; then whether the fused median is within one SD of the unfused one.

    python benchmarks/fused_sweep.py                              # 5 seeds, 40 trials, fuse auto
    python benchmarks/fused_sweep.py --trials 20 --fuse 8         # shorter; a fixed group size
    python benchmarks/fused_sweep.py --example digits_horizons.yaml   # with horizons: also the best per length

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
from sweeps.trial.record import TrialRecord, horizons_of

REPO = Path(__file__).resolve().parents[1]


def one_sweep(example: str, seed: int, fuse: str | int, trials: int,
              folder: Path) -> tuple[float, float, dict[float, float]]:
    """(best value, wall seconds, best value per horizon length) of the example under `seed` and
    `fuse`; the last is empty without horizons."""
    data = yaml.safe_load((REPO / "examples" / example).read_text())
    name = f"digits-{fuse}-{seed}"
    data["study"].update(name=name, seed=seed, n_trials=trials, storage=f"sqlite:///{folder / name}.db")
    data["objective"]["fuse"] = fuse
    data.setdefault("dashboard", {})["keep_checkpoints"] = 0
    config = parse_config(data, REPO / "examples")
    started = time.perf_counter()
    study = run_sweep(config, target_of(config), show_progress=False)
    wall = time.perf_counter() - started
    lengths: dict[float, list[float]] = {}
    for trial in study.trials:
        for h in horizons_of(TrialRecord.of(trial)):
            if h.value is not None:
                lengths.setdefault(h.length, []).append(h.value)
    sign = 1 if config.study.direction == "maximize" else -1
    per_length = {length: sign * max(sign * v for v in values) for length, values in sorted(lengths.items())}
    return study.best_value, wall, per_length


def fuse_value(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--fuse", type=fuse_value, default="auto", help="the fused setting (auto or K)")
    parser.add_argument("--example", default="digits.yaml", help="a study file of examples/ on the digits task")
    args = parser.parse_args()
    settings = ["off", args.fuse]
    best: dict[str, list[float]] = {str(s): [] for s in settings}
    walls: dict[str, list[float]] = {str(s): [] for s in settings}
    per_length: dict[str, dict[float, list[float]]] = {str(s): {} for s in settings}
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.seeds):
            for setting in settings:
                value, wall, lengths = one_sweep(args.example, seed, setting, args.trials, Path(folder))
                best[str(setting)].append(value)
                walls[str(setting)].append(wall)
                for length, length_best in lengths.items():
                    per_length[str(setting)].setdefault(length, []).append(length_best)
                shown = "".join(f", at {length:g}: {v:.4f}" for length, v in lengths.items())
                print(f"seed {seed} fuse {setting}: best {value:.4f}{shown} in {wall:.1f} s", flush=True)
    print(f"\n{args.example}, {args.trials} trials per sweep, {args.seeds} seeds, one worker")
    for setting in settings:
        b, w = best[str(setting)], walls[str(setting)]
        sd = statistics.stdev(b) if len(b) > 1 else 0.0
        print(f"fuse {str(setting):>4}: median best {statistics.median(b):.4f}  SD {sd:.4f}  "
              f"wall median {statistics.median(w):.1f} s, total {sum(w):.1f} s")
    for length in per_length["off"]:
        line = "  ".join(f"fuse {s}: {statistics.median(per_length[str(s)].get(length, [float('nan')])):.4f}"
                         for s in settings)
        print(f"median best at {length:g}: {line}")
    off, on = best["off"], best[str(args.fuse)]
    sd = statistics.stdev(off) if len(off) > 1 else 0.0
    gap = statistics.median(on) - statistics.median(off)
    print(f"fused median - unfused median: {gap:+.4f} ({'within' if abs(gap) <= sd else 'outside'} one unfused SD); "
          f"wall time fused / unfused: {sum(walls[str(args.fuse)]) / sum(walls['off']):.2f}")


if __name__ == "__main__":
    main()
