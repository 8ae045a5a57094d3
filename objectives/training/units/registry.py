"""The budget units by name, in the order they were registered (the study file's order)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from objectives.training.units.base import BudgetUnit

UNITS: dict[str, BudgetUnit] = {}


def register(cls: type[BudgetUnit]) -> type[BudgetUnit]:
    """Class decorator: make a unit known to budgets, the study file and its schema."""
    for attr in ("name", "step_unit", "consumed_attr", "steps_attr"):
        if not hasattr(cls, attr):
            raise TypeError(f"budget unit {cls.__name__} must set {attr}")
    if cls.name in UNITS and type(UNITS[cls.name]) is not cls:
        raise ValueError(f"budget unit {cls.name!r} is already registered ({type(UNITS[cls.name]).__name__})")
    UNITS[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    """Forget a unit (a test's own, once it is done)."""
    UNITS.pop(name, None)


def unit_names() -> tuple[str, ...]:
    return tuple(UNITS)


def unit_named(name: str) -> BudgetUnit:
    try:
        return UNITS[name]
    except KeyError:
        raise ValueError(f"unknown budget unit {name!r}; known: {', '.join(UNITS)}") from None


def step_unit_of(name: str) -> str:
    """What one report step counts under a budget unit (an unknown unit counts itself)."""
    unit = UNITS.get(name)
    return unit.step_unit if unit is not None else name


def steps_counted(step_unit: str) -> tuple[str, float] | None:
    """The stored trial attribute a report step of `step_unit` counts, and its factor (None: no unit's)."""
    for unit in UNITS.values():
        if unit.step_unit == step_unit:
            return unit.steps_attr
    return None
