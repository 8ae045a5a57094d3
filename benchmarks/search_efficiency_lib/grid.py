"""The grid runner: tasks x methods x seeds, each finished run appended to a `--save` file (JSON
lines) as it completes and read back instead of run again (resume), the time estimate, and
`--load` of saved runs."""

from __future__ import annotations

import gzip
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from .analysis import Cell, compute_to_target, fmt, target_for
from .methods import BASELINES, CRN_METHODS, WSD_BASELINES, run_method
from .records import Evaluation, TrialRecord, charged
from .tasks import MARGIN, PRIOR_SECONDS_PER_1K, TaskSpec, fingerprint

RunKey = tuple[str, str, int, str]  # task, method (or variant), seed, fingerprint


def run_to_json(task: str, method: str, seed: int, fp: str, records: list[TrialRecord], wall: float,
                meta: dict | None = None, charge: float = 0.0) -> dict:
    return {"task": task, "method": method, "seed": seed, "fingerprint": fp, "wall": wall, "meta": meta,
            **({"eval_charge": charge} if charge else {}),
            "trials": [trial_to_json(r) for r in records]}


def trial_to_json(r: TrialRecord) -> dict:
    out = {"examples": r.examples, "evals": [[e.examples, e.value, e.seconds] + ([e.made] if e.made else [])
                                             for e in r.evaluations]}
    if r.params is not None:  # issue 30: every trial's parameters, seed and timestamps
        out.update(params=r.params, started=r.started, ended=r.ended)
    if r.evaluations_made is not None:
        out.update(evaluations_made=r.evaluations_made)
    return out


def append_run(path: str, line: dict) -> None:
    """One finished run, appended as one JSON line and flushed to disk before the next starts. A
    line cut short by an earlier stop is ended first, so that it does not swallow this one."""
    torn = False
    if Path(path).exists() and Path(path).stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def commit_file(path: str, message: str, tries: int = 5) -> bool:
    """`git commit` of this one file (issue 30: each finished run committed as it finishes, so an
    interrupted grid loses nothing); retried while another shard holds the index lock; a failure
    is reported, never fatal to the grid."""
    import subprocess
    import time

    folder = str(Path(path).resolve().parent)
    for attempt in range(tries):
        add = subprocess.run(["git", "add", "--", str(Path(path).resolve())], cwd=folder, capture_output=True,
                             text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", str(Path(path).resolve())], cwd=folder,
            capture_output=True, text=True).returncode == 0
        if done:
            return True
        time.sleep(1 + attempt)
    print(f"# git commit of {path} failed ({message}); the run is saved in the file", file=sys.stderr)
    return False


def read_lines(path: str) -> list[dict]:
    """The runs of a --save file (JSON lines, or the same gzipped); a last line cut short by a stop
    mid-write is skipped, with a note."""
    if not Path(path).exists():
        return []
    raw = Path(path).read_bytes()
    text = (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8")
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"# {path}:{number}: not a complete run (a stop mid-write?), skipped", file=sys.stderr)
    return out


def records_of(item: dict) -> list[TrialRecord]:
    return [TrialRecord(t["examples"], [Evaluation(*e) for e in t["evals"]], t.get("params"), t.get("started"),
                        t.get("ended"), t.get("evaluations_made")) for t in item["trials"]]


def saved_runs(path: str) -> dict[RunKey, tuple[list[TrialRecord], float]]:
    return {(item["task"], item["method"], item["seed"], item["fingerprint"]): (records_of(item), item["wall"])
            for item in read_lines(path)}


def estimate_seconds(spec: TaskSpec, method: str, walls: dict[tuple[str, str], list[float]]) -> float:
    """The mean wall of the saved runs of the same task and method, else the prior rate x C (x 1.15
    for the service, whose last trials overshoot C)."""
    if walls.get((spec.name, method)):
        return statistics.mean(walls[(spec.name, method)])
    rate = PRIOR_SECONDS_PER_1K.get(spec.name, 1.5)
    return rate * spec.total / 1000 * (1.15 if method not in BASELINES else 1.0)


def report_estimate(specs: dict[str, TaskSpec], todo: list[RunKey], done: dict, log=print) -> float:
    walls: dict[tuple[str, str], list[float]] = {}
    for (task, method, _, fp), (_, wall) in done.items():
        if task in specs and fp == todo_fp(todo, task):
            walls.setdefault((task, method), []).append(wall)
    left = [key for key in todo if key not in done]
    whole = sum(estimate_seconds(specs[k[0]], k[1], walls) for k in todo)
    rest = sum(estimate_seconds(specs[k[0]], k[1], walls) for k in left)
    log(f"# estimate: {len(todo)} runs, {len(todo) - len(left)} already saved; the whole grid about "
        f"{whole / 60:.0f} min, what is left about {rest / 60:.0f} min (one process on 2 cores; from the "
        f"saved runs' walls where there are any, else PRIOR_SECONDS_PER_1K)")
    return rest


def todo_fp(todo: list[RunKey], task: str) -> str | None:
    return next((k[3] for k in todo if k[0] == task), None)


def run_grid(specs: dict[str, TaskSpec], seeds: list[int], methods: dict[str, dict | None],
             reference: dict, log=print, save: str | None = None,
             metas: dict[str, dict] | None = None,
             methods_by_task: dict[str, dict[str, dict | None]] | None = None,
             shard: tuple[int, int] | None = None, commit: bool = False) -> dict[tuple[str, str], Cell]:
    """Every task x method x seed (`methods_by_task`: each task's own methods, e.g. variants resolved
    to its budget). With `save`, each finished run is appended to that file as it completes, and a
    run already in it (same task, method, seed and fingerprint) is read back instead of trained
    again: a stopped run resumes where it stopped. The estimate covers the whole grid. `shard`
    (i, n): only runs i, i + n, i + 2n, ... of the grid's order (one process per core, each with
    its own --save file; --load merges them). `commit`: each appended run is also committed to git
    (the --save file alone), as it finishes."""
    metas = metas or {}
    by_task = methods_by_task or {name: methods for name in specs}
    fps = {name: fingerprint(spec, metas.get(name)) for name, spec in specs.items()}
    done = saved_runs(save) if save else {}
    todo = [(name, label, seed, fps[name]) for name in specs for label in by_task[name] for seed in seeds]
    if shard is not None:  # this process's share: every n-th run, so shards have about equal work
        todo = todo[shard[0] :: shard[1]]
    report_estimate(specs, todo, done, log)
    cells: dict[tuple[str, str], Cell] = {}
    for key in todo:
        name, label, seed, fp = key
        spec = specs[name]
        target = target_for(reference, name, spec, MARGIN) if name in reference else math.nan
        cell = cells.setdefault((name, label), Cell(charge=spec.eval_charge if label in CRN_METHODS else 0.0))
        cell.seeds.append(seed)
        if key in done:
            (records, wall), how = done[key], " (saved)"
        else:
            method = label if label in BASELINES + WSD_BASELINES + tuple(CRN_METHODS) else "service"
            records, wall = run_method(method, spec, seed, by_task[name][label])
            how = ""
            if save:
                append_run(save, run_to_json(name, label, seed, fp, records, wall, metas.get(name), cell.charge))
                done[key] = (records, wall)
                if commit:
                    commit_file(save, f"search_efficiency grid: {name} {label} seed {seed} ({Path(save).name})")
        cell.runs.append((records, wall))
        hit = compute_to_target(charged(records, cell.charge), target, spec.total, spec.maximize)
        log(f"# {name:12s} {label:22s} seed {seed}: examples {fmt(hit.examples)} seconds "
            f"{fmt(hit.seconds, 's')} best@C {hit.best:.4f} target {target:.4f} "
            f"trials {len(records)} wall {wall:.1f}s{how}")
        if not how and save:
            report_estimate(specs, todo, done, log)
    return cells


def load_runs(paths: Sequence[str], fingerprints: dict[str, str] | None = None) -> dict[tuple[str, str], Cell]:
    """Runs saved with --save (JSON lines), or in the older one-document format; the same task and
    method in several files add up (more seeds). With `fingerprints`, a saved run of a task whose
    fingerprint differs (another compute level or corpus) is left out, with a note."""
    cells: dict[tuple[str, str], Cell] = {}
    seen: set[tuple] = set()  # (task, method, seed, fingerprint): a run saved in two files counts once
    for path in paths:
        raw = Path(path).read_bytes()
        text = (gzip.decompress(raw) if path.endswith(".gz") else raw).decode("utf-8")
        try:
            saved = json.loads(text)
        except json.JSONDecodeError:  # several lines: the --save format
            saved = None
        if saved is None or (isinstance(saved, dict) and "task" in saved):
            skipped = repeated = 0
            for item in sorted(read_lines(path), key=lambda i: (i["task"], i["method"], i["seed"])):
                want = (fingerprints or {}).get(item["task"])
                if want is not None and item.get("fingerprint") != want:
                    skipped += 1
                    continue
                key = (item["task"], item["method"], item["seed"], item.get("fingerprint"))
                if key in seen:
                    repeated += 1
                    continue
                seen.add(key)
                cell = cells.setdefault((item["task"], item["method"]), Cell(charge=item.get("eval_charge", 0.0)))
                cell.runs.append((records_of(item), item["wall"]))
                cell.seeds.append(item["seed"])
            if skipped:
                print(f"# {path}: {skipped} runs at another compute level or corpus left out", file=sys.stderr)
            if repeated:
                print(f"# {path}: {repeated} runs already read from an earlier file left out", file=sys.stderr)
            continue
        for item in saved["cells"] if isinstance(saved, dict) else saved:
            cell = cells.setdefault((item["task"], item["method"]), Cell())
            cell.runs.extend((records_of(run), run["wall"]) for run in item["runs"])
    return cells
