"""The dry-run plan: what each candidate batch size would do under the budget, before any trial."""

from __future__ import annotations

from objectives.training.budget import Budget, plan_trial
from objectives.training.coupling import effective_lr
from sweeps.config.schema import ConfigError
from sweeps.config.study_file import SweepConfig


def budget_of(config: SweepConfig, tokens_per_example: int | None = None) -> Budget:
    """`tokens_per_example`: the task's (a tokens budget counts with it)."""
    b = config.budget
    return Budget(b.unit, float(b.per_trial), float(b.eval_every), tokens_per_example)


def check_plan(config: SweepConfig, n_train: int, tokens_per_example: int | None = None) -> None:
    """Checks that need the task: every candidate gets at least one update, and a tokens budget
    has the task's tokens per example to count with."""
    if config.budget.unit == "tokens" and tokens_per_example is None:
        raise ConfigError(
            "objective.task",
            f"task {config.objective.task!r} declares no tokens_per_example, which a tokens budget "
            "counts with: set Task(tokens_per_example=...) in the task, or use budget.unit examples",
        )
    budget = budget_of(config, tokens_per_example)
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
    uncountable = budget.unit == "tokens" and tokens_per_example is None
    search = config.search
    epochs = max(search.epoch_choices()) if search.epochs is not None else None
    base_lr = search.reference_lr()
    rows = []
    for batch_size in search.batch_sizes():
        row: dict = {"batch_size": batch_size}
        if budget.unit == "seconds" or uncountable:
            plan = plan_trial(Budget("seconds", budget.per_trial, budget.eval_every), n_train, batch_size,
                              epochs, config.objective.drop_last)
            what = "timed" if budget.unit == "seconds" else "unknown"
            row.update(iterations_per_epoch=plan.iterations_per_epoch, updates=what, epochs=what, examples=what)
            if budget.unit == "tokens":
                row["tokens"] = what
        else:
            plan = plan_trial(budget, n_train, batch_size, epochs, config.objective.drop_last)
            row.update(
                iterations_per_epoch=plan.iterations_per_epoch,
                updates=plan.planned_updates,
                epochs=round(plan.planned_epochs, 2),
                examples=plan.planned_examples,
            )
            if budget.unit == "tokens":
                row["tokens"] = plan.planned_tokens
        for rule in search.couplings():
            row[f"lr_{rule}"] = effective_lr(rule, base_lr, batch_size, search.reference_batch_size)
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
    columns = list(rows[0])
    cells = [[fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(head + lines)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def text_table(rows: list[dict]) -> str:
    """Rows of the same keys as right-aligned columns, `-` for a missing value (report, best)."""
    columns = list(rows[0])
    cells = [[fmt(r[c]) if r[c] is not None else "-" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
