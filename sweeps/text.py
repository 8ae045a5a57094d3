"""Tables and number formats: the one place that decides how a command's text looks.

Every table the commands print (`sweeps studies`, `best`, `report`, `confirm`, `predict`, the dry-run
plan) is `table`: rows of the same keys as aligned columns under a header of those keys, right-aligned
unless named in `left`, `-` for a missing value. The number formats beside it are the ones the text
uses everywhere: `number` (a table's float, 4 significant digits), `human` (1.23k, 4.00M), `duration`
(4m05s), `percent`, `quantity` (the one-line messages' 2,000 and 2.00e7), `timestamp`, and
`column_format` (one format per column of the plan, so its decimal points line up).

`emit_json` writes the one document `--format json` prints (`sweeps studies`, `sweeps best`).

Imports nothing of the project, so every command (read-only ones included) can use it for free.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

MISSING = "-"  # a cell, figure or time that has no value
SIGNIFICANT = 4  # significant digits of a table's float, and of each value of a plan column
MAX_DECIMALS = 6  # past these, a plan column turns scientific (eps)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def number(value: Any) -> str:
    """A table's cell: a float to SIGNIFICANT digits, None as `-`, anything else as str() writes it."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.{SIGNIFICANT}g}"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], left: Sequence[str] = (),
          formats: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    """Rows of the same keys as aligned columns, two spaces apart, under a header of the keys.
    Columns named in `left` are aligned to the left, the others to the right; each cell is written by
    its column's function in `formats`, else by `number`. No line ends in spaces."""
    columns = list(rows[0])
    formats = formats or {}
    cells = [[formats.get(c, number)(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if c in left else v.rjust(w)
                         for c, v, w in zip(columns, values, widths)).rstrip()

    return "\n".join([line(columns), *(line(row) for row in cells)])


def indented(text: str, by: str = "  ") -> str:
    return "\n".join(by + line for line in text.splitlines())


def human(x: float) -> str:
    """A large figure in three significant digits and a suffix (1.23k, 4.00M, 2.50G); below 1000,
    4 significant digits."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{suffix}"
    return f"{x:.{SIGNIFICANT}g}"


def duration(seconds: float) -> str:
    """Whole seconds as 42s, 4m05s or 3h07m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def percent(part: float, whole: float, decimals: int = 0) -> str:
    """`part` as a share of `whole`: 31%, or 31.4% with decimals=1; `-` of nothing."""
    if not whole:
        return MISSING
    return f"{100 * part / whole:.{decimals}f}%"


def quantity(x: float) -> str:
    """A figure of the one-line messages: 3.928, 0.5, 2,000 below 1e4; 2.00e7 from there (Python
    would write 2.00e+07)."""
    if abs(x) < 9999.5:  # what 4 significant digits write without an exponent
        return f"{x:,.4g}"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def timestamp(when: datetime | None) -> str:
    """A stored time as it is shown: 2026-12-06 01:02:03, `-` for none."""
    return when.strftime(TIME_FORMAT) if isinstance(when, datetime) else MISSING


def column_format(values: list) -> Callable[[Any], str]:
    """One number format for a whole column, so its decimal points line up: as many decimals as
    its most precise value needs at SIGNIFICANT digits (41.72 and 41.70, not 41.72 and 41.7), or
    scientific notation past MAX_DECIMALS decimals or from 1e6 on. Non-floats print as `number`."""
    nonzero = [abs(v) for v in values if isinstance(v, float) and math.isfinite(v) and v != 0]
    if not nonzero:
        return number
    decimals = max(decimals_needed(v) for v in nonzero)
    if decimals > MAX_DECIMALS or max(nonzero) >= 1e6:
        return lambda v: f"{v:.{SIGNIFICANT - 1}e}" if isinstance(v, float) else number(v)
    return lambda v: f"{v:.{decimals}f}" if isinstance(v, float) else number(v)


def decimals_needed(value: float) -> int:
    """Decimals that show `value` to SIGNIFICANT digits, trailing zeros dropped (2.5: 1, 10.0: 0)."""
    places = max(0, SIGNIFICANT - 1 - math.floor(math.log10(value)))
    text = f"{value:.{places}f}".rstrip("0")
    return len(text) - text.index(".") - 1 if "." in text else 0


def plain(value: Any) -> Any:
    """A value as JSON holds it: NaN and infinities as null (JSON has none), times in ISO format,
    tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def emit_json(document: Mapping[str, Any], stream: TextIO | None = None) -> None:
    """The one JSON document of `--format json`, on stdout, strict JSON (no NaN), indented."""
    print(json.dumps(plain(document), indent=2, allow_nan=False, default=str), file=stream or sys.stdout)
