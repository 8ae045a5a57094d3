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
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

from sweeps.config.plan import fmt, plan_rows
from sweeps.config.study_file import SweepConfig
from sweeps.loop.progress import consumed, human

# optuna-dashboard's storage format (optuna_dashboard._note, _custom_plot_data; checked by the tests), written
# here without importing optuna_dashboard, whose import pulls in its whole web app.
CHUNK = 2045


def note_ver_key(trial_id: int | None) -> str:
    return "dashboard:note_ver" if trial_id is None else f"dashboard:{trial_id}:note_ver"


def note_str_key_prefix(trial_id: int | None) -> str:
    return "dashboard:note_str:" if trial_id is None else f"dashboard:{trial_id}:note_str:"


def chunks(text: str, prefix: str) -> dict[str, str]:
    return {f"{prefix}{i}": text[start:start + CHUNK] for i, start in enumerate(range(0, len(text), CHUNK))}


def set_study_system_attrs(storage: optuna.storages.BaseStorage, study_id: int, attrs: dict[str, Any]) -> None:
    """Set several study system attributes in one transaction on an RDB store."""
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        for key, value in attrs.items():
            storage.set_study_system_attr(study_id, key, value)
        return
    model = models.StudySystemAttributeModel
    with _create_scoped_session(backend.scoped_session, True) as session:
        study = models.StudyModel.find_or_raise_by_id(study_id, session)
        existing = {a.key: a for a in session.query(model).filter(model.study_id == study.study_id,
                                                                    model.key.in_(list(attrs)))}
        for key, value in attrs.items():
            if key in existing:
                existing[key].value_json = json.dumps(value)
            else:
                session.add(model(study_id=study_id, key=key, value_json=json.dumps(value)))


def note_attrs(body: str, trial_id: int | None, version: int, old_chunks: int = 0) -> dict[str, Any]:
    attrs: dict[str, Any] = {note_ver_key(trial_id): version, **chunks(body, note_str_key_prefix(trial_id))}
    for i in range(len(attrs) - 1, old_chunks):  # blank what a longer earlier version left
        attrs[f"{note_str_key_prefix(trial_id)}{i}"] = ""
    return attrs


def write_study_note(study: optuna.Study, body: str) -> None:
    system = study._storage.get_study_system_attrs(study._study_id)
    prefix = note_str_key_prefix(None)
    old_chunks = sum(1 for key in system if key.startswith(prefix))
    version = int(system.get(note_ver_key(None), 0)) + 1
    set_study_system_attrs(study._storage, study._study_id, note_attrs(body, None, version, old_chunks))


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---:|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def budget_line(study: optuna.Study, config: SweepConfig) -> str:
    trials = study.get_trials(deepcopy=False)
    unit, per_trial = config.budget.unit, float(config.budget.per_trial)
    spent = sum(consumed(t, unit) for t in trials)
    total = config.study.n_trials * per_trial
    counts = {s: sum(1 for t in trials if t.state == s) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                   TrialState.FAIL)}
    try:
        best = f"best {config.study.metric} **{study.best_value:.4f}** (trial {study.best_trial.number})"
    except ValueError:
        best = f"no {config.study.metric} yet"
    return (f"**Budget spent**: {human(spent)} of {human(total)} {unit} ({100 * spent / total:.1f}%) · "
            f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
            f"{counts[TrialState.FAIL]} failed · {best}")


def study_note(study: optuna.Study, config: SweepConfig, n_train: int, footer: str = "") -> str:
    s, b = config.study, config.budget
    stored = config.to_dict()
    if stored["study"].get("storage"):
        from storage import redact
        stored["study"]["storage"] = redact(stored["study"]["storage"])
    config_yaml = yaml.safe_dump(json.loads(json.dumps(stored, default=str)), sort_keys=False)
    parts = [
        f"## {s.name}: batch size, epochs and LR coupling under one compute budget",
        f"{s.direction} **{s.metric}** over {s.n_trials} trials · {config.sampler.name} sampler · "
        f"{config.pruner.name} pruner · budget **{b.per_trial:g} {b.unit}** per trial, evaluated every "
        f"{b.eval_every:g} {b.unit}",
        budget_line(study, config),
        f"### Plan of the budget (N = {n_train} training examples, base LR {config.search.reference_lr():.4g})",
        markdown_table(plan_rows(config, n_train)),
        "### Resolved study file",
        "```yaml\n" + config_yaml + "```",
    ]
    if footer:
        parts.append(footer)
    return "\n\n".join(parts)


SETTINGS = [  # (user attr or param, label)
    ("batch_size", "batch size"), ("base_lr", "base LR"), ("coupling", "coupling rule"),
    ("lr", "effective peak LR"), ("warmup_fraction", "warmup fraction"), ("epochs", "epochs (searched)"),
    ("iterations_per_epoch", "iterations per epoch"), ("planned_updates", "planned updates"),
    ("micro_batch", "micro-batch"), ("accumulation_steps", "accumulation steps"), ("seed", "seed"),
    ("device", "device"), ("n_train", "training examples"),
]
RESULTS = [
    ("stop_reason", "stopped by"), ("best_step", "best at step"), ("updates", "updates"),
    ("examples_seen", "examples seen"), ("epochs_completed", "epochs completed"),
    ("train_seconds", "train seconds"), ("examples_per_second", "examples / s"),
]


def trial_note(trial: FrozenTrial, config: SweepConfig) -> str:
    values = {**trial.params, **trial.user_attrs}
    if "warmup_fraction" not in values and not hasattr(config.search.warmup_fraction, "low"):
        values["warmup_fraction"] = config.search.warmup_fraction
    if values.get("warmup_fraction") is not None and values.get("planned_updates"):
        values["warmup_fraction"] = (f"{values['warmup_fraction']:.4g} "
                                     f"({round(values['warmup_fraction'] * values['planned_updates'])} updates)")
    o = config.objective
    opt = f"{o.optimizer}, momentum {o.momentum:g}" if o.optimizer == "sgd" else f"{o.optimizer}, betas {o.betas}"
    rows = [f"| {label} | {fmt(values[key])} |" for key, label in SETTINGS if values.get(key) is not None]
    rows.append(f"| optimizer | {opt}, weight decay {o.weight_decay:g} |")
    rows.append(f"| LR schedule | {config.schedule.name}, to {config.schedule.final_lr_fraction:g} x peak |")
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    results = [f"| {label} | {fmt(values[key])} |" for key, label in RESULTS if values.get(key) is not None]
    head = f"## Trial {trial.number}: {trial.state.name.lower()}, {config.study.metric} {value}"
    parts = [head, "| effective setting | value |\n|---|---:|\n" + "\n".join(rows)]
    if results:
        parts.append("| outcome | value |\n|---|---:|\n" + "\n".join(results))
    if values.get("error"):
        parts.append(f"**error**: `{values['error']}`")
    return "\n\n".join(parts)


class TrialNotes:
    """A sweep-loop callback: each recorded trial gets its note (one transaction, bookkeeping thread)."""

    def __init__(self, config: SweepConfig):
        self.config = config

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        body = trial_note(trial, self.config)
        set_study_system_attrs(study._storage, study._study_id, note_attrs(body, trial._trial_id, 1))
