"""Markdown notes for optuna-dashboard: the study's (config, plan, budget spent) and each trial's.

Notes are study system attributes in optuna-dashboard's own format (a version key and the body
in chunks of 2,045 characters). A trial's note is written once, when the trial is recorded, by
the sweep loop's bookkeeping thread: one transaction, off the training thread. Writing the keys
directly (instead of `optuna_dashboard.save_note`, which reads every study system attribute
twice per call) keeps that cost flat as a study grows.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from storage.batch import set_study_system_attrs
from storage.dashboard_formats import chunks, note_str_key_prefix, note_ver_key
from storage.optuna_private import study_id_of, study_storage, trial_id_of
from sweeps.budget.ledger_view import note_text, state_of
from sweeps.config.plan import plan_rows
from sweeps.config.study_file import SweepConfig
from sweeps.results.analysis import analyse
from sweeps.results.recommendation import recommendation
from sweeps.text import human, number
from sweeps.trial.record import TrialRecord, consumed

# optuna-dashboard's storage format (`storage.dashboard_formats`, checked against the installed dashboard by
# tests/test_optuna_private.py), written here without importing optuna_dashboard, whose import pulls in its
# whole web app.


def note_attrs(body: str, trial_id: int | None, version: int, old_chunks: int = 0) -> dict[str, Any]:
    attrs: dict[str, Any] = {note_ver_key(trial_id): version, **chunks(body, note_str_key_prefix(trial_id))}
    for i in range(len(attrs) - 1, old_chunks):  # blank what a longer earlier version left
        attrs[f"{note_str_key_prefix(trial_id)}{i}"] = ""
    return attrs


def write_study_note(study: optuna.Study, body: str) -> None:
    storage, study_id = study_storage(study), study_id_of(study)
    system = storage.get_study_system_attrs(study_id)
    prefix = note_str_key_prefix(None)
    old_chunks = sum(1 for key in system if key.startswith(prefix))
    version = int(system.get(note_ver_key(None), 0)) + 1
    set_study_system_attrs(storage, study_id, note_attrs(body, None, version, old_chunks))


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    lines += ["| " + " | ".join(number(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def budget_line(study: optuna.Study, config: SweepConfig) -> str:
    trials = study.get_trials(deepcopy=False)
    unit = config.budget.unit
    spent = sum(consumed(t, unit) for t in trials)
    total = config.study.n_trials * config.planned_per_trial()
    counts = {s: sum(1 for t in trials if t.state == s) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                   TrialState.FAIL)}
    try:
        best = f"best {config.study.metric} **{study.best_value:.4f}** (trial {study.best_trial.number})"
    except ValueError:
        best = f"no {config.study.metric} yet"
    return (f"**Budget spent**: {human(spent)} of {human(total)} {unit} ({100 * spent / total:.1f}%) · "
            f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
            f"{counts[TrialState.FAIL]} failed · {best}")


def study_note(study: optuna.Study, config: SweepConfig, n_train: int, footer: str = "",
               tokens_per_example: int | None = None) -> str:
    s, b = config.study, config.budget
    stored = config.to_dict()
    if stored["study"].get("storage"):
        from storage import redact
        stored["study"]["storage"] = redact(stored["study"]["storage"])
    config_yaml = yaml.safe_dump(json.loads(json.dumps(stored, default=str)), sort_keys=False)
    parts = [
        f"## {s.name}: batch size, epochs and LR coupling under one compute budget",
        *recommendation_section(study),
        f"{s.direction} **{s.metric}** over {s.n_trials} trials · {config.sampler.name} sampler · "
        f"{config.pruner.name} pruner · budget **{b.per_trial:g} {b.unit}** per trial, evaluated every "
        f"{b.eval_every:g} {b.unit}",
        budget_line(study, config),
        *([note_text(state)] if config.study.total_budget and (state := state_of(study)) else []),
        f"### Plan of the budget (N = {n_train} training examples, base LR {config.search.reference_lr():.4g})",
        markdown_table(plan_rows(config, n_train, tokens_per_example)),
        "### Resolved study file",
        "```yaml\n" + config_yaml + "```",
    ]
    if footer:
        parts.append(footer)
    return "\n\n".join(parts)


def recommendation_section(study: optuna.Study) -> list[str]:
    """The report's recommendation paragraph, once the study has a complete trial (else nothing)."""
    analysis = analyse(study, with_importances=False)
    return ["### Recommendation", recommendation(analysis)] if analysis.complete else []


SETTINGS = [  # (a TrialRecord field or a searched parameter, label)
    ("batch_size", "batch size"), ("base_lr", "base LR"), ("coupling", "coupling rule"),
    ("lr", "effective peak LR"), ("warmup_fraction", "warmup fraction"), ("epochs", "epochs (searched)"),
    ("iterations_per_epoch", "iterations per epoch"), ("planned_updates", "planned updates"),
    ("micro_batch", "micro-batch"), ("accumulation_steps", "accumulation steps"), ("seed", "seed"),
    ("device", "device"), ("n_train", "training examples"), ("tokens_per_example", "tokens per example"),
]
RESULTS = [  # (a TrialRecord field, label)
    ("stop_reason", "stopped by"), ("best_step", "best at step"), ("updates", "updates"),
    ("examples_seen", "examples seen"), ("tokens_seen", "tokens seen"), ("epochs_completed", "epochs completed"),
    ("train_seconds", "train seconds"), ("examples_per_second", "examples / s"),
    ("cooldown_updates", "cooldown-branch updates"), ("cooldown_examples", "cooldown-branch examples"),
]


def trial_note(trial: FrozenTrial, config: SweepConfig) -> str:
    record = TrialRecord.of(trial)
    values = {**trial.params, **record.known()}
    if "warmup_fraction" not in values and not hasattr(config.search.warmup_fraction, "low"):
        values["warmup_fraction"] = config.search.warmup_fraction
    if values.get("warmup_fraction") is not None and record.planned_updates:
        values["warmup_fraction"] = (f"{values['warmup_fraction']:.4g} "
                                     f"({round(values['warmup_fraction'] * record.planned_updates)} updates)")
    o = config.objective
    opt = f"{o.optimizer}, momentum {o.momentum:g}" if o.optimizer == "sgd" else f"{o.optimizer}, betas {o.betas}"
    rows = [f"| {label} | {number(values[key])} |" for key, label in SETTINGS if values.get(key) is not None]
    rows.append(f"| optimizer | {opt}, weight decay {o.weight_decay:g} |")
    sched = config.schedule
    shape = sched.name if sched.name != "wsd" else f"wsd (last {sched.decay_fraction:g} of the plan decays)"
    rows.append(f"| LR schedule | {shape}, to {sched.final_lr_fraction:g} x peak |")
    if sched.cooldown_evaluations:
        rows.append(f"| rung evaluations | on a cooldown branch of {sched.cooldown_fraction:g} x the updates done |")
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    results = [f"| {label} | {number(values[key])} |" for key, label in RESULTS if values.get(key) is not None]
    head = f"## Trial {trial.number}: {trial.state.name.lower()}, {config.study.metric} {value}"
    parts = [head, "| effective setting | value |\n|---|---:|\n" + "\n".join(rows)]
    if results:
        parts.append("| outcome | value |\n|---|---:|\n" + "\n".join(results))
    if record.error:
        parts.append(f"**error**: `{record.error}`")
    return "\n\n".join(parts)


class TrialNotes:
    """A sweep-loop callback: each recorded trial gets its note (one transaction, bookkeeping thread)."""

    def __init__(self, config: SweepConfig):
        self.config = config

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        body = trial_note(trial, self.config)
        set_study_system_attrs(study_storage(study), study_id_of(study), note_attrs(body, trial_id_of(trial), 1))
