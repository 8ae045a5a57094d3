"""Budget units: one class per unit (`base.BudgetUnit`), one file each, and their registry.

Importing the package registers the built-in units, in the study file's order."""
# isort: skip_file

from objectives.training.units import updates  # noqa: F401  (each import registers its unit)
from objectives.training.units import examples  # noqa: F401
from objectives.training.units import epochs  # noqa: F401
from objectives.training.units import seconds  # noqa: F401
from objectives.training.units import tokens  # noqa: F401
from objectives.training.units.base import BudgetUnit, CountsExamples
from objectives.training.units.registry import (
    UNITS,
    register,
    step_unit_of,
    steps_counted,
    unit_named,
    unit_names,
    unregister,
)

__all__ = ["UNITS", "BudgetUnit", "CountsExamples", "register", "step_unit_of", "steps_counted", "unit_named",
           "unit_names", "unregister"]
