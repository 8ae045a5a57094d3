"""Resuming a study safely: it keeps the config it ran with and the fingerprint of its search,
and a rerun with another search stops before training (`sweeps.config.fingerprint`)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

import optuna

from storage import redact
from sweeps.config.fingerprint import changes_between, fingerprint_of
from sweeps.config.study_file import SweepConfig
from sweeps.config.target import SweepTarget
from sweeps.errors import SearchChanged
from sweeps.trial.record import CONFIG_ATTR, FINGERPRINT_ATTR, FINGERPRINT_HISTORY_ATTR, OVERRIDES_ATTR

# check: stop on a changed search (exit 2); allow: carry on and record the change (--allow-changes);
# skip: compare nothing (a worker of --workers, whose parent checked; `sweeps probe`)
ChangePolicy = Literal["check", "allow", "skip"]
NEW_STUDY_FLAG = "--new-study"
ALLOW_CHANGES_FLAG = "--allow-changes"


def stored_config(config: SweepConfig, target: SweepTarget) -> dict[str, Any]:
    """The config as the study keeps it: JSON types, a store URL's password hidden, and the
    study's own name (`--study-name` or `--new-study`), not the file's."""
    stored = json.loads(json.dumps(config.to_dict(), default=str))
    stored["study"]["name"] = target.study_name
    if stored["study"].get("storage"):  # the study file may name a URL with a password
        stored["study"]["storage"] = redact(stored["study"]["storage"])
    return stored


def schedule_hint(diff: list) -> str:
    """A study started before the default schedule became wsd (issue 17) resumes by naming its own."""
    if any(change.key == "schedule.name" and change.old == "cosine" and change.new == "wsd" for change in diff):
        return ("the default schedule is wsd since issue 17: if the study file names no schedule, add "
                "`schedule: {name: cosine}` to keep the study's; or ")
    return ""


def keep_search(study: optuna.Study, config: SweepConfig, target: SweepTarget, changes: ChangePolicy = "check",
                overrides: list[str] | None = None) -> None:
    """Store the fingerprint of a study that has none (a new one, or one made before fingerprints
    existed); otherwise compare it with `config`'s. A different search raises `SearchChanged`
    under "check"; under "allow" the change is appended to the study's history, and the new
    fingerprint and config are stored. `overrides`: the `--set` arguments, recorded with them."""
    new = fingerprint_of(config)
    old = study.user_attrs.get(FINGERPRINT_ATTR)
    if not isinstance(old, dict):
        study.set_user_attr(FINGERPRINT_ATTR, new)
        return
    diff = changes_between(old, new)
    if not diff or changes == "skip":
        return
    listed = "\n".join(f"  {change}" for change in diff)
    if changes == "check":
        raise SearchChanged(
            f"study {target.study_name!r} in {redact(target.storage_url)} was run with another search; "
            f"changed:\n{listed}\n{schedule_hint(diff)}start afresh under a new name in the same store with "
            f"{NEW_STUDY_FLAG} NAME, or carry on with these changes (recorded with the study) with {ALLOW_CHANGES_FLAG}"
        )
    history = study.user_attrs.get(FINGERPRINT_HISTORY_ATTR)
    history = list(history) if isinstance(history, list) else []
    history.append({"at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "changes": [str(change) for change in diff]})
    study.set_user_attr(FINGERPRINT_HISTORY_ATTR, history)
    study.set_user_attr(FINGERPRINT_ATTR, new)
    study.set_user_attr(CONFIG_ATTR, stored_config(config, target))
    study.set_user_attr(OVERRIDES_ATTR, list(overrides or []))
    print(f"note: study {target.study_name!r} carries on with a changed search "
          f"(recorded in its {FINGERPRINT_HISTORY_ATTR}):\n{listed}")


def complete_note(finished: int, n_trials: int) -> str:
    """What a rerun with nothing left to do says (and it exits 0)."""
    return f"study complete: {finished} of {n_trials} trials; raise --n-trials to continue"
