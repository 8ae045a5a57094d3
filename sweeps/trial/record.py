"""What a trial records, and the names it is stored under: the one place that spells them.

A trial's user attributes are a public contract (the report, the dashboard's notes, notebooks
and studies stored long ago read them by name), so every stored name is a field of
`TrialRecord` and nothing else spells one. Writers build their attribute dicts with the helpers
below; readers read `TrialRecord.of(trial)`.

A trial writes its attributes in groups, each once it is known, and a group never reached is
absent, not None: `IDENTITY` (set by the runner before the trial starts), `PLAN` (derived before
training, so a trial that crashes while training carries it too), `GPU` (CUDA trials only),
`RESULT` (after training; `peak_memory_mb` only when measured, `noise_scale_curve` and
`noise_scale` only with `measure: {noise_scale: true}`, `value_se_curve` and `value_se` only
with `measure: {value_se: true}` or `pruner.noise_margin` and a metric with per-example values,
the `cooldown_*` names only with `schedule: {cooldown_evaluations: true}`, `horizons` and the
`branch_*` names only with `budget.horizons`) and `ERROR` (a failed trial) and `FUSED`
(a member of a fused group, `objective.fuse`).
A confirmation run (`sweeps confirm`) also carries `CONFIRM`, set when it is queued.

The study's own units are here too: `budget_unit` and `step_unit`, the unit of the integer steps
its trials report (`objectives.training.budget.step_unit_of`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from objectives.training.budget import TrialPlan
from objectives.training.units import UNITS, step_unit_of, steps_counted, unit_named

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from objectives.training.loop import TrainResult


@dataclass(frozen=True)
class TrialRecord:
    """Every user attribute a trial stores, each field under its stored name. None: not stored,
    or stored as None (`gpu` when the index cannot be told, `best_step` before any evaluation)."""

    # IDENTITY: which worker ran it (absent when the objective runs outside the runner)
    worker: int | None = None
    sampler_seed: int | None = None
    # PLAN: derived before training
    batch_size: int | None = None
    lr: float | None = None  # the effective peak LR, after coupling
    coupling: str | None = None
    iterations_per_epoch: int | None = None
    planned_updates: int | None = None
    seed: int | None = None
    n_train: int | None = None
    device: str | None = None
    tokens_per_example: int | None = None  # the task's, stored only when it declares one
    # the warmup in updates, stored only when it is absolute (budget.horizons, schedule.warmup_updates)
    warmup_updates: int | None = None
    # GPU: CUDA trials only
    gpu: int | None = None  # the index as nvidia-smi numbers it
    gpu_name: str | None = None
    # RESULT: measured by training
    updates: int | None = None
    examples_seen: int | None = None
    tokens_seen: int | None = None  # examples_seen x tokens_per_example, stored only when declared
    epochs_completed: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    examples_per_second: float | None = None
    stop_reason: str | None = None  # budget | epochs | early_stopping | pruned | diverged | oom
    best_step: int | None = None
    micro_batch: int | None = None
    accumulation_steps: int | None = None
    peak_memory_mb: float | None = None  # CUDA only, stored only when measured
    # B_simple at each evaluation, [[step, value], ...]; stored only with measure.noise_scale
    noise_scale_curve: list[list[float]] | None = None
    noise_scale: float | None = None  # the curve's last value; absent when the curve is empty
    # what the cooldown branches of rung evaluations trained, beside the main run's `updates`,
    # `examples_seen` and `train_seconds`; stored only with schedule.cooldown_evaluations
    cooldown_updates: int | None = None
    cooldown_examples: int | None = None
    cooldown_seconds: float | None = None
    # the standard error of each evaluation's value, [[step, se], ...]; stored only when measured
    value_se_curve: list[list[float]] | None = None
    value_se: float | None = None  # the curve's last value; absent when the curve is empty
    # with budget.horizons: one `HorizonRecord.attrs()` per horizon answered, ascending, the last the
    # trial's own length; and what their branches trained beside the run (summed over horizons)
    horizons: list[dict[str, Any]] | None = None
    branch_updates: int | None = None
    branch_examples: int | None = None
    branch_seconds: float | None = None
    # ERROR: why the trial failed
    error: str | None = None
    # CONFIRM: a confirmation run, set when `sweeps confirm` queues it in the companion study
    confirms_trial: int | None = None  # the main study's trial whose configuration it trains again
    confirm_seed: int | None = None  # the fresh training seed it trains with (a prediction's run too)
    # PREDICT: a run of `sweeps predict --verify`, set when it is queued in the companion study
    predicts_arm: str | None = None  # predicted | lr x2 | lr /2 | batch x2 | batch /2
    predicts_budget: float | None = None  # the budget predicted for, in the budget's unit
    # FUSED: a member of a fused group (objective.fuse, docs/guide/fused_training.md); absent for a trial trained alone
    fused_group: str | None = None  # the group's id: its worker's sampler seed and its first trial's number
    fused_size: int | None = None  # the members training together when it joined, itself included

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        """The record a stored trial holds; a name it does not hold reads as None."""
        return cls.from_attrs(trial.user_attrs)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TrialRecord:
        return cls(**{name: attrs.get(name) for name in NAMES})

    def attrs(self, names: Iterable[str]) -> dict[str, Any]:
        """The attributes stored for `names`, in that order (a `WHEN_KNOWN` name only when set)."""
        return {name: getattr(self, name) for name in names
                if name not in WHEN_KNOWN or getattr(self, name) is not None}

    def known(self) -> dict[str, Any]:
        """The fields that hold a value, by stored name."""
        return {name: value for name in NAMES if (value := getattr(self, name)) is not None}

    def updates_per_step(self, step_unit: str) -> float | None:
        """Optimizer updates per report step (`step_unit`, the study's) in this trial; None when
        the trial made no update or its record cannot tell."""
        if not self.updates:
            return None
        counted = steps_counted(step_unit)
        if counted is None:
            return None
        attr, factor = counted
        denominator = factor * (getattr(self, attr) or 0)
        return self.updates / denominator if denominator else None


NAMES = tuple(f.name for f in fields(TrialRecord))
IDENTITY = ("worker", "sampler_seed")
PLAN = ("batch_size", "lr", "coupling", "iterations_per_epoch", "planned_updates", "seed", "n_train", "device",
        "tokens_per_example", "warmup_updates")
GPU = ("gpu", "gpu_name")
RESULT = ("updates", "examples_seen", "tokens_seen", "epochs_completed", "train_seconds", "eval_seconds",
          "examples_per_second", "stop_reason", "best_step", "micro_batch", "accumulation_steps", "peak_memory_mb",
          "noise_scale_curve", "noise_scale", "value_se_curve", "value_se", "cooldown_updates",
          "cooldown_examples", "cooldown_seconds", "horizons", "branch_updates", "branch_examples", "branch_seconds")
ERROR = ("error",)
CONFIRM = ("confirms_trial", "confirm_seed")
PREDICT = ("predicts_arm", "predicts_budget")
FUSED = ("fused_group", "fused_size")
# stored only when not None
WHEN_KNOWN = frozenset({
    "peak_memory_mb", "tokens_per_example", "warmup_updates", "tokens_seen", "noise_scale_curve", "noise_scale",
    "value_se_curve", "value_se", "cooldown_updates", "cooldown_examples", "cooldown_seconds",
    "horizons", "branch_updates", "branch_examples", "branch_seconds"})


@dataclass(frozen=True)
class HorizonRecord:
    """One horizon a trial answered (objectives/training/horizons.py), as stored in its `horizons`
    list: what a dedicated run of that length reports, and what its branch cost beside the run."""

    length: float  # in the budget's unit
    step: int  # its report step: the pruner's rung, and the trial's intermediate value there
    value: float | None  # the best evaluation of the dedicated run (None: none finite)
    best_step: int | None
    updates: int
    examples: int
    stop_reason: str  # budget | early_stopping | diverged (a pruned trial records no longer horizon)
    curve: list[list[float]]  # [[step, value], ...]: the dedicated run's evaluations
    branch_updates: int  # 0 for the trial's own length, which its run trains
    branch_examples: int
    branch_seconds: float
    value_se: float | None = None  # the best evaluation's standard error, when measured

    def attrs(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if data["value_se"] is None:
            del data["value_se"]
        return data

    @classmethod
    def from_attrs(cls, data: Mapping[str, Any]) -> HorizonRecord:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


def horizons_of(record: TrialRecord) -> list[HorizonRecord]:
    """The horizons a trial answered; empty for a study without horizons."""
    return [HorizonRecord.from_attrs(h) for h in record.horizons or []]


# The trial system attribute a worker sets when it starts training a trial (its value: the trial's
# own id, so a retry's copy of it does not count): a running trial without it was asked ahead and
# waits behind its worker's current one.
STARTED_KEY = "sweeps:started"


def value_se_key(step: int) -> str:
    """The trial system attribute (not a user attribute: one per pruning step, for the pruner's
    noise guard) that holds the standard error of the value reported at `step`."""
    return f"sweeps:value_se:{step}"


def _check_names() -> None:
    """The groups name every field once and nothing else: a name spelled wrong fails on import."""
    grouped = IDENTITY + PLAN + GPU + RESULT + ERROR + CONFIRM + PREDICT + FUSED
    counted = {unit.consumed_attr for unit in UNITS.values()} | {unit.steps_attr[0] for unit in UNITS.values()}
    if sorted(grouped) != sorted(NAMES) or not (WHEN_KNOWN | counted) <= set(NAMES):
        raise RuntimeError(f"sweeps.trial.record: the groups {grouped} do not match the fields {NAMES}")


_check_names()


# --- writers: the attribute dicts a trial stores, group by group --------------------------------
def identity_attrs(worker: int, sampler_seed: int) -> dict[str, Any]:
    return TrialRecord(worker=worker, sampler_seed=sampler_seed).attrs(IDENTITY)


def plan_attrs(batch_size: int, lr: float, coupling: str, plan: TrialPlan, seed: int, device: str,
               warmup_updates: int | None = None) -> dict[str, Any]:
    return TrialRecord(batch_size=batch_size, lr=lr, coupling=coupling,
                       iterations_per_epoch=plan.iterations_per_epoch, planned_updates=plan.planned_updates,
                       seed=seed, n_train=plan.n_train, device=device,
                       tokens_per_example=plan.tokens_per_example, warmup_updates=warmup_updates).attrs(PLAN)


def gpu_attrs(gpu: int | None, gpu_name: str) -> dict[str, Any]:
    return TrialRecord(gpu=gpu, gpu_name=gpu_name).attrs(GPU)


def result_attrs(result: TrainResult, plan: TrialPlan) -> dict[str, Any]:
    peak, curve, se_curve = result.peak_memory_mb, result.noise_scale_curve, result.value_se_curve
    return TrialRecord(
        updates=result.updates,
        examples_seen=result.examples_seen,
        tokens_seen=None if plan.tokens_per_example is None else result.examples_seen * plan.tokens_per_example,
        epochs_completed=round(result.updates / plan.iterations_per_epoch, 4),
        train_seconds=round(result.train_seconds, 4),
        eval_seconds=round(result.eval_seconds, 4),
        examples_per_second=round(result.examples_per_second, 1),
        stop_reason=result.stop_reason,
        best_step=result.best_step,
        micro_batch=result.micro_batch,
        accumulation_steps=result.accumulation_steps,
        peak_memory_mb=None if peak is None else round(peak, 1),
        noise_scale_curve=None if curve is None else [[step, round(value, 4)] for step, value in curve],
        noise_scale=round(curve[-1][1], 4) if curve else None,
        cooldown_updates=result.cooldown_updates,
        cooldown_examples=result.cooldown_examples,
        cooldown_seconds=None if result.cooldown_seconds is None else round(result.cooldown_seconds, 4),
        value_se_curve=None if se_curve is None else [[step, round(se, 6)] for step, se in se_curve],
        value_se=round(se_curve[-1][1], 6) if se_curve else None,
        **horizon_fields(result),
    ).attrs(RESULT)


def horizon_fields(result: TrainResult) -> dict[str, Any]:
    """The horizons' record fields; none without horizons."""
    if result.horizons is None:
        return {}
    kept = [HorizonRecord(
        length=h.units, step=h.step, value=h.value, best_step=h.best_step, updates=h.updates, examples=h.examples,
        stop_reason=h.stop_reason, curve=[[step, value] for step, value in h.history],
        branch_updates=h.branch_updates, branch_examples=h.branch_examples,
        branch_seconds=round(h.branch_seconds, 4),
        value_se=None if h.value_se is None else round(h.value_se, 6)) for h in result.horizons]
    return dict(horizons=[h.attrs() for h in kept],
                branch_updates=sum(h.branch_updates for h in kept),
                branch_examples=sum(h.branch_examples for h in kept),
                branch_seconds=round(sum(h.branch_seconds for h in kept), 4))


def fused_attrs(group: str, size: int) -> dict[str, Any]:
    return TrialRecord(fused_group=group, fused_size=size).attrs(FUSED)


def error_attrs(message: str) -> dict[str, Any]:
    return TrialRecord(error=message).attrs(ERROR)


def confirm_attrs(source_trial: int, seed: int) -> dict[str, Any]:
    return TrialRecord(confirms_trial=source_trial, confirm_seed=seed).attrs(CONFIRM)


def predict_attrs(arm: str, budget: float, seed: int) -> dict[str, Any]:
    """A prediction's run: its arm, the budget it trains, and its seed (kept as a confirmation's)."""
    return {**TrialRecord(confirm_seed=seed).attrs(("confirm_seed",)),
            **TrialRecord(predicts_arm=arm, predicts_budget=budget).attrs(PREDICT)}


def queued_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes a trial was queued with (`CONFIRM`, `PREDICT`): what a retry of it must carry too."""
    return {name: attrs[name] for name in CONFIRM + PREDICT if name in attrs}


# --- readers ------------------------------------------------------------------------------------
def consumed(trial: FrozenTrial, budget_unit: str) -> float:
    """What the trial used of its budget, in the budget's unit, its cooldown and horizon branches
    included. Read without building a record: the progress line sums it over every trial of the
    study after each trial."""
    attrs = trial.user_attrs
    return unit_named(budget_unit).consumed(attrs) + aside_consumed(attrs, budget_unit)


def aside_consumed(attrs: Mapping[str, Any], unit: str) -> float:
    """What a trial trained beside its run: its cooldown branches and its horizons' branches."""
    return cooldown_consumed(attrs, unit) + branches_consumed(attrs, unit)


def cooldown_consumed(attrs: Mapping[str, Any], unit: str) -> float:
    """What a trial's cooldown branches trained, in a budget unit (0 without them). They are not
    part of the trial's own `budget.per_trial`, which its main run fills, but they count against
    `study.total_budget` and in the study's spent budget."""
    if not attrs.get("cooldown_updates"):
        return 0.0
    return float(unit_named(unit).aside(attrs, "cooldown"))


def branches_consumed(attrs: Mapping[str, Any], unit: str) -> float:
    """What a trial's horizon branches trained, in a budget unit (0 without them): like cooldown
    branches, beside the trial's own `budget.per_trial`, and counted against `study.total_budget`."""
    if not attrs.get("branch_updates"):
        return 0.0
    return float(unit_named(unit).aside(attrs, "branch"))


def consumed_to_horizon(attrs: Mapping[str, Any], answered: Sequence[HorizonRecord], index: int,
                        unit: str) -> float:
    """What a trial trained to answer its horizons up to `answered[index]` (`horizons_of` its
    record), in a budget unit: its run up to that horizon's branch point (all of the run, for the
    trial's own length) and the branches of that horizon and every shorter one."""
    horizon, upto = answered[index], answered[:index + 1]
    counts = {**attrs,  # the unit reads the trial's own (iterations_per_epoch, tokens_per_example)
              "horizon_updates": horizon.updates - horizon.branch_updates + sum(h.branch_updates for h in upto),
              "horizon_examples": horizon.examples - horizon.branch_examples + sum(h.branch_examples for h in upto)}
    return float(unit_named(unit).aside(counts, "horizon"))


# --- the study's units ----------------------------------------------------------------------------
BUDGET_UNIT_ATTR = "budget_unit"
STEP_UNIT_ATTR = "step_unit"


def study_unit_attrs(budget_unit: str) -> dict[str, str]:
    """The study attributes naming its units, stored when the study is created."""
    return {BUDGET_UNIT_ATTR: budget_unit, STEP_UNIT_ATTR: step_unit_of(budget_unit)}


# --- a study's confirmation runs (`sweeps confirm`) ---------------------------------------------
# They live in a companion study of the same store (Optuna's samplers read every trial of a study,
# so they must not sit among the search's); each study names the other.
CONFIRM_STUDY_ATTR = "confirm_study"  # on the main study: its companion's name
CONFIRMS_STUDY_ATTR = "confirms_study"  # on the companion: the main study's name
# `sweeps predict --verify` keeps its runs the same way, in `<name>-predict`
PREDICT_STUDY_ATTR = "predict_study"  # on the main study: its prediction companion's name
PREDICTION_ATTR = "prediction"  # on that companion: what `sweeps predict` predicted (`PredictedRun.attrs`)


def companion_name(study_name: str, kind: str = "confirm") -> str:
    """`kind`: confirm | predict."""
    return f"{study_name}-{kind}"


@dataclass(frozen=True)
class StudyUnits:
    budget_unit: str
    step_unit: str  # what the trials' report steps count

    @classmethod
    def of(cls, study: optuna.Study) -> StudyUnits:
        """The units a study stored; one that stored none is read as an updates budget."""
        attrs = study.user_attrs
        budget_unit = attrs.get(BUDGET_UNIT_ATTR, "updates")
        return cls(budget_unit, attrs.get(STEP_UNIT_ATTR, budget_unit))


# --- the study's own config: the file as it ran, and what of it defines the search ----------------
CONFIG_ATTR = "config"  # the validated study file, `--set` applied, study.name the study's own
OVERRIDES_ATTR = "overrides"  # the --set arguments that made it (a store URL's password hidden)
# `sweeps probe`: the largest micro-batch that fits, {device model: size}, and what it measured
PROBED_MICRO_BATCH_ATTR = "probed_micro_batch"
PRIOR_ATTR = "lr_prior"  # search.lr_range_test's measured prior (sweeps/search/prior.py: MeasuredPrior)
PROBE_ATTR = "probe"  # {device, device_model, largest_fit, limit, tried: [[micro batch, fits, examples/s]]}
FINGERPRINT_ATTR = "fingerprint"  # sweeps.config.fingerprint: {key path: value}
FINGERPRINT_HISTORY_ATTR = "fingerprint_history"  # [{"at": ISO time, "changes": ["key: old -> new"]}]
