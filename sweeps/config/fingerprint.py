"""A study's fingerprint: the keys of the study file that define what its trials search.

A study resumed with a study file that searches something else would mix two searches in one
set of trials: a TPE model fitted on both, a best trial from one budget next to one from another,
and a "budget spent" that adds two budgets. So the study stores its fingerprint when it is
created, and a rerun compares (`sweeps/results/resume.py`).

Which keys define the search, and why (`SEARCH_KEYS`):

- `objective.task`, `objective.options`: the model and data a value is measured on;
- `study.metric`: what the value is (`direction` is checked on its own, on every open);
- `objective.optimizer`, `momentum`, `weight_decay`, `betas`, `eps`, `drop_last`, `precision`:
  the training arithmetic (`drop_last` also changes the counting of epochs and updates);
- `budget`: unit, per_trial and eval_every fix how far each trial trains and the grid the pruner
  compares on;
- `search`: the space itself (batch sizes, LR range, coupling rules, reference batch size,
  epochs, warmup);
- `schedule`, `early_stopping`: the LR each update uses, and when a trial stops before its budget.
  The schedule's opt-in keys (`OPT_IN`: wsd's, added later) enter it only when set, so a study
  fingerprinted before they existed resumes with a file that leaves them out.

Not in it, because they change where or how fast the same search runs, or how many trials it
gets, never what a trial measures: `study.name`, `n_trials`, `storage`, `seed` (each resume
reseeds the sampler anyway), `training_seed`, the failure and heartbeat settings, the sampler and
pruner (switching from random to TPE mid-study is a normal move), `objective.device`,
`max_micro_batch` (gradient accumulation gives the same update), `eval_batch_size`, `compile`,
`fuse` (a fused member trains what it trains alone: docs/guide/fused_training.md),
`gpu_memory_fraction`, `loader` (its default follows the cores of each worker) and `dashboard`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sweeps.config.study_file import SweepConfig

# (section, key or None for the whole section): what defines the search, see the module docstring
SEARCH_KEYS: tuple[tuple[str, str | None], ...] = (
    ("study", "metric"),
    ("objective", "task"), ("objective", "options"), ("objective", "optimizer"), ("objective", "momentum"),
    ("objective", "weight_decay"), ("objective", "betas"), ("objective", "eps"), ("objective", "drop_last"),
    ("objective", "precision"),
    ("budget", None), ("search", None), ("schedule", None), ("early_stopping", None),
)

# keys added after studies were fingerprinted, with the value that means "off": left out when off
OPT_IN: dict[str, Any] = {"schedule.decay_fraction": None, "schedule.cooldown_evaluations": False,
                          "schedule.cooldown_fraction": None, "schedule.warmup_updates": None,
                          "budget.horizons": None, "search.lr_range_test": None,
                          "search.lr_range_test.cap_batch": False}


@dataclass(frozen=True)
class Change:
    key: str
    old: Any  # `MISSING` when the study had no such key
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {shown(self.old)} -> {shown(self.new)}"


MISSING = "(unset)"


def fingerprint_of(config: SweepConfig) -> dict[str, Any]:
    """The search-defining keys of a validated config (defaults filled, `--set` applied), as flat
    `section.key.path` -> JSON value pairs, so two fingerprints compare key by key."""
    data = json.loads(json.dumps(config.to_dict(), default=str))  # tuples as lists, plain types
    flat: dict[str, Any] = {}
    for section, key in SEARCH_KEYS:
        if key is None:
            flatten(section, data.get(section), flat)
        else:
            flatten(f"{section}.{key}", (data.get(section) or {}).get(key), flat)
    for key, off in OPT_IN.items():
        if key in flat and flat[key] == off:
            del flat[key]
    return flat


def flatten(path: str, value: Any, out: dict[str, Any]) -> None:
    """Mappings become dotted paths (an empty one stays a leaf); lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            flatten(f"{path}.{key}", inner, out)
    else:
        out[path] = value


def changes_between(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every key whose value differs, or that only one side has, in sorted order."""
    return [Change(key, old.get(key, MISSING), new.get(key, MISSING))
            for key in sorted(set(old) | set(new))
            if old.get(key, MISSING) != new.get(key, MISSING)]


def shown(value: Any) -> str:
    """A value as the study file would spell it: `60000` for 60000.0, `cosine` unquoted."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)
