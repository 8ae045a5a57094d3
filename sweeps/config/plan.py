"""The dry-run plan: what each candidate batch size would do under the budget, before any trial."""

from __future__ import annotations

import math

from objectives.training.budget import Budget, iterations_per_epoch, plan_trial
from objectives.training.coupling import couple, effective_lr
from sweeps.config.study_file import FloatRange, IntRange, SweepConfig
from sweeps.errors import ConfigError
from sweeps.text import column_format, table


def budget_of(config: SweepConfig, tokens_per_example: int | None = None) -> Budget:
    """`tokens_per_example`: the task's (a tokens budget counts with it)."""
    b = config.budget
    return Budget(b.unit, float(b.per_trial), float(b.eval_every), tokens_per_example)


def check_plan(config: SweepConfig, n_train: int, tokens_per_example: int | None = None) -> None:
    """Checks that need the task: every candidate gets at least one update, and a tokens budget
    has the task's tokens per example to count with."""
    budget = budget_of(config, tokens_per_example)
    missing = budget.kind.missing(tokens_per_example)
    if missing is not None:
        raise ConfigError("objective.task", f"task {config.objective.task!r} {missing}")
    for batch_size in config.search.batch_sizes():
        if config.objective.drop_last and batch_size > n_train:
            raise ConfigError(
                "search.batch_size",
                f"batch size {batch_size} exceeds the {n_train} training examples with drop_last",
            )
        cap = budget.updates_cap(n_train, batch_size, config.objective.drop_last)
        if cap is not None and cap < 1:
            raise ConfigError(
                "budget.per_trial",
                f"{budget.per_trial:g} {budget.unit} cannot hold one update of batch size "
                f"{batch_size} on {n_train} training examples",
            )


def plan_rows(config: SweepConfig, n_train: int, tokens_per_example: int | None = None) -> list[dict]:
    """One row per candidate batch size. A tokens budget whose tokens per example are unknown (a
    study read back from before they were recorded) plans as "unknown"."""
    budget = budget_of(config, tokens_per_example)
    uncountable = budget.kind.missing(tokens_per_example) is not None
    search = config.search
    epochs = max(search.epoch_choices()) if search.epochs is not None else None
    base_lr = search.reference_lr()
    rows = []
    for batch_size in search.batch_sizes():
        row: dict = {"batch_size": batch_size}
        if budget.timed or uncountable:
            plan = plan_trial(Budget("seconds", budget.per_trial, budget.eval_every), n_train, batch_size,
                              epochs, config.objective.drop_last)
            what = "timed" if budget.timed else "unknown"
            row.update(iterations_per_epoch=plan.iterations_per_epoch, updates=what, epochs=what, examples=what)
            if not budget.timed:
                row.setdefault(budget.unit, what)  # a unit of its own (tokens) gets its column
        else:
            plan = plan_trial(budget, n_train, batch_size, epochs, config.objective.drop_last)
            row.update(
                iterations_per_epoch=plan.iterations_per_epoch,
                updates=plan.planned_updates,
                epochs=round(plan.planned_epochs, 2),
                examples=plan.planned_examples,
            )
            if budget.unit not in row:  # a unit of its own (tokens) gets its column
                row[budget.unit] = budget.kind.planned(plan, budget)
        for rule in search.couplings():
            row[f"lr_{rule}"] = effective_lr(rule, base_lr, batch_size, search.reference_batch_size)
        if "adam_sqrt" in search.couplings():  # the rule rescales Adam's betas and eps too
            adam = couple("adam_sqrt", base_lr, batch_size, search.reference_batch_size,
                          config.objective.betas, config.objective.eps)
            row.update(beta1_adam_sqrt=adam.betas[0], beta2_adam_sqrt=adam.betas[1], eps_adam_sqrt=adam.eps)
        rows.append(row)
    return rows


def format_plan(config: SweepConfig, n_train: int, tokens_per_example: int | None = None) -> str:
    rows = plan_rows(config, n_train, tokens_per_example)
    b, s = config.budget, config.search
    rounding = "floor, drop_last" if config.objective.drop_last else "ceil"
    head = [
        f"study {config.study.name}: {config.study.n_trials} trials, {config.sampler.name} sampler, "
        f"{config.pruner.name} pruner, {config.study.direction} {config.study.metric}",
        f"budget per trial: {b.per_trial:g} {b.unit}, evaluated every {b.eval_every:g} {b.unit}",
        f"training examples N = {n_train}; iterations per epoch = {rounding}(N / B)"
        + (f"; tokens = examples x {tokens_per_example} per example" if b.unit == "tokens" else ""),
        f"effective LR at base LR {s.reference_lr():.4g}, reference batch size {s.reference_batch_size}"
        + (f"; epochs capped at {max(s.epoch_choices())}" if s.epochs is not None else ""),
        "",
    ]
    if "adam_sqrt" in s.couplings():
        o = config.objective
        head.insert(-1, f"adam_sqrt also rescales Adam's betas and eps, with k = B / {s.reference_batch_size}: "
                        f"1 - beta times k (within [0, 0.9999]) and eps / sqrt(k), from objective.betas "
                        f"({o.betas[0]:g}, {o.betas[1]:g}) and eps {o.eps:g}, which the other rules keep")
    lines = [table(rows, formats={c: column_format([r[c] for r in rows]) for c in rows[0]})]
    warnings = [f"warning: {w}" for w in plan_warnings(config, n_train, tokens_per_example)]
    return "\n".join(head + lines + ([""] + warnings if warnings else []))


WARMUP_INERT_SHARE = 0.05  # a smaller sliver of the warmup range that rounds to no warmup is not worth a warning


def plan_warnings(config: SweepConfig, n_train: int, tokens_per_example: int | None = None) -> list[str]:
    """Parts of a search range the budget makes inert: values no batch size can ever train
    differently. Empty for a seconds budget (its updates are known only once a trial runs)."""
    budget = budget_of(config, tokens_per_example)
    if budget.timed or budget.kind.missing(tokens_per_example) is not None:
        return []
    found = [inert_epochs(config, n_train, budget), inert_warmup(config, n_train, budget)]
    return [w for w in found if w]


def inert_epochs(config: SweepConfig, n_train: int, budget: Budget) -> str | None:
    """Epoch values at or past the most epochs the budget holds at any batch size all end on the
    budget instead (E x I >= the budget's updates): they train alike, so all but one do nothing."""
    search, drop_last = config.search, config.objective.drop_last
    if search.epochs is None:
        return None
    held = {b: budget.updates_cap(n_train, b, drop_last) / iterations_per_epoch(n_train, b, drop_last)
            for b in search.batch_sizes()}
    at = max(held, key=held.get)
    first = math.ceil(held[at] - 1e-9)  # the smallest epoch count that reaches the budget everywhere
    epochs = search.epochs
    values = epochs.values() if isinstance(epochs, IntRange) else search.epoch_choices()
    inert = sorted(v for v in set(values) if v >= first)
    if len(inert) < 2:
        return None
    contiguous = inert == list(range(inert[0], inert[-1] + 1))
    span = f"{inert[0]}-{inert[-1]}" if contiguous and len(inert) > 2 else ", ".join(map(str, inert))
    fix = "lower search.epochs.high to" if isinstance(epochs, IntRange) else "keep one value of them, e.g."
    return (f"search.epochs: {span} ({len(inert)} of {len(set(values))} values) never take effect: the budget "
            f"ends every trial first, at {held[at]:.1f} epochs at most (batch size {at}), so they all train "
            f"alike; {fix} {first}, or raise budget.per_trial")


def inert_warmup(config: SweepConfig, n_train: int, budget: Budget) -> str | None:
    """Warmup fractions too small to round to one warmup update at any batch size, even with the
    most updates a trial can plan: that part of the range trains with no warmup at all."""
    warm, search = config.search.warmup_fraction, config.search
    if not isinstance(warm, FloatRange) or warm.high <= warm.low:
        return None
    epochs = max(search.epoch_choices()) if search.epochs is not None else None
    most = max(plan_trial(budget, n_train, b, epochs, config.objective.drop_last).planned_updates
               for b in search.batch_sizes())
    none_below = 0.5 / most  # round(f x updates) is 0 up to here
    if none_below <= warm.low:
        return None
    edge = min(none_below, warm.high)
    scale = math.log if warm.log else (lambda x: x)
    share = (scale(edge) - scale(warm.low)) / (scale(warm.high) - scale(warm.low))
    if share < WARMUP_INERT_SHARE:
        return None
    return (f"search.warmup_fraction: {warm.low:g}-{edge:.3g} ({share:.0%} of the range) never takes effect: "
            f"with {most} updates at most, it rounds to no warmup update at every batch size; raise "
            f"search.warmup_fraction.low to {edge:.3g}, or raise budget.per_trial")
