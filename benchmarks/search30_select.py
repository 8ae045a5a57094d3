"""Issue 30, part 4: the selection of the service's configuration on the development tasks
(docs/search_efficiency.md, "Part 4: the mechanisms, chosen on the development tasks").

Per candidate (a JSON file of study-file sections, benchmarks/search30_candidates/<LABEL>*.json,
its runs in benchmarks/results/dev30_<LABEL>_*.jsonl), against the baselines run under the same
evaluation points (dev30_base_*.jsonl without horizons, dev30_baseH_*.jsonl with the candidate's
horizons): per margin (0.01 and 2 x noise) the best baseline per task (the lowest censored median
compute to target) and the geometric mean over the tasks of median(best baseline) / median(candidate)
with its bootstrap 90% interval; the selection statistic is the smaller of the two margins' ratios.
The rule: the largest statistic wins, but a candidate within 5% of it with fewer mechanisms wins
over it (the simpler one; among those the larger statistic).

    python benchmarks/search30_select.py S0 S1 S2 S3 S4 [S5]
"""

from __future__ import annotations

import argparse
import glob
import json
import random
from pathlib import Path

from search_efficiency_lib.analysis import best_baseline_ratio
from search_efficiency_lib.cli import CHARGE_FILE, read_json, with_charges, with_horizons, without_notes
from search_efficiency_lib.grid import load_runs
from search_efficiency_lib.methods import CRN_BASELINES, CRN_GRID, CRN_SERVICE
from search_efficiency_lib.reference import load_noise, load_reference, noise_margins, resolve_reference
from search_efficiency_lib.tasks import DEVELOPMENT, ISSUE30_FULL_TRIALS, MARGIN, fingerprint, issue30_specs

HERE = Path(__file__).resolve().parent
CANDIDATES = HERE / "search30_candidates"
RESULTS = HERE / "results"
TOLERANCE = 0.05  # within 5% of the best statistic, fewer mechanisms wins
BASELINES = [m for m in CRN_GRID if m in CRN_BASELINES]  # every method of the grid but crn_service


def config_file(label: str) -> Path:
    found = sorted(CANDIDATES.glob(f"{label}_*.json")) + sorted(CANDIDATES.glob(f"{label}.json"))
    if not found:
        raise SystemExit(f"no candidate file {CANDIDATES}/{label}_*.json")
    return found[0]


def mechanisms(config: dict) -> int:
    """How many mechanisms a candidate adds to the defaults: one per changed section (sampler,
    pruner, budget.horizons), or `_mechanisms` in the file when it says (S5: its parts)."""
    return int(config.get("_mechanisms", len([k for k in config if not k.startswith("_")])))


def rate(label: str, parser) -> dict:
    raw = json.loads(config_file(label).read_text())
    config = without_notes(raw)
    names = list(DEVELOPMENT)
    specs, metas = issue30_specs(names, ISSUE30_FULL_TRIALS)
    specs = with_horizons(with_charges(specs, metas, read_json(CHARGE_FILE), parser), config)
    horizons = bool((config.get("budget") or {}).get("horizons"))
    base = "baseH" if horizons else "base"
    files = sorted(glob.glob(str(RESULTS / f"dev30_{base}_*.jsonl"))) + sorted(
        glob.glob(str(RESULTS / f"dev30_{label}_*.jsonl")))
    fps = {name: fingerprint(spec, metas.get(name)) for name, spec in specs.items()}
    cells = load_runs(files, fps)
    noise = load_noise()
    reference = resolve_reference(load_reference(), noise, specs, metas)
    margin_sets = [(f"margin {MARGIN}", {n: MARGIN for n in specs}),
                   ("margin 2 x noise", noise_margins(noise, specs, metas))]
    out = {"label": label, "baselines": base, "mechanisms": mechanisms(raw), "config": config, "margins": {}}
    rng = random.Random(0)
    for title, margins in margin_sets:
        got = best_baseline_ratio(cells, specs, reference, margins, CRN_SERVICE, BASELINES, rng)
        seeds = {n: len(cells[(n, CRN_SERVICE)].runs) for n in specs if (n, CRN_SERVICE) in cells}
        out["margins"][title] = (got, seeds)
    ratios = [got[1][0] for got, _ in out["margins"].values() if got]
    out["statistic"] = min(ratios) if len(ratios) == len(margin_sets) else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("labels", nargs="+", help="candidate labels (S0 S1 ...)")
    args = parser.parse_args()
    rows = [rate(label, parser) for label in args.labels]
    print("candidate  mech baselines  margin            best baseline per task                      "
          "ratio [90% interval]   seeds")
    for row in rows:
        for title, (got, seeds) in row["margins"].items():
            if not got:
                print(f"{row['label']:10s} {row['mechanisms']:4d} {row['baselines']:9s}  {title:17s} (runs missing)")
                continue
            best_of, (point, low, high) = got
            which = ", ".join(f"{n} {b}" for n, b in best_of.items())
            print(f"{row['label']:10s} {row['mechanisms']:4d} {row['baselines']:9s}  {title:17s} {which:43s} "
                  f"{point:5.2f} [{low:.2f}, {high:.2f}]   {'/'.join(str(s) for s in seeds.values())}")
        stat = row["statistic"]
        print(f"{row['label']:10s} selection statistic (min over margins): "
              f"{'n/a' if stat is None else f'{stat:.3f}'}  config {row['config']}")
    rated = [r for r in rows if r["statistic"] is not None]
    if not rated:
        return
    top = max(rated, key=lambda r: r["statistic"])
    close = [r for r in rated if r["statistic"] >= (1 - TOLERANCE) * top["statistic"]]
    chosen = min(close, key=lambda r: (r["mechanisms"], -r["statistic"]))
    s0 = next((r for r in rated if r["label"] == "S0"), None)
    if s0 is not None:
        beat = [r["label"] for r in rated if r["label"] != "S0" and r["statistic"] > s0["statistic"]]
        print(f"beat S0 ({s0['statistic']:.3f}) by the statistic: {', '.join(beat) or 'none'}")
    print(f"largest statistic: {top['label']} {top['statistic']:.3f}; within {TOLERANCE:.0%} of it: "
          + ", ".join(f"{r['label']} ({r['mechanisms']} mechanisms, {r['statistic']:.3f})" for r in close))
    print(f"chosen by the rule: {chosen['label']} {chosen['config']}")


if __name__ == "__main__":
    main()
