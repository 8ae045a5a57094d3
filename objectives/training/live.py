"""The trial now training, as a dozen numbers in shared memory, for a display in another process.

The trainer writes its update count each update (one store into a shared double, tens of
nanoseconds: no lock, no syscall, no I/O) and each evaluation; the trial's identity and plan are
written once at its start. A reader in a forked process (the sweep's bookkeeper, which draws the
progress display) reads them whenever it likes. The identity fields are guarded by a sequence
number (odd while being written), so a reader never sees one trial's number with another's batch
size; the running counters are single doubles, read as they are.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from dataclasses import dataclass

SEQ, TRIAL, BATCH_SIZE, LR, PLANNED_UPDATES, PLANNED_UNITS, TIME_CAP, STARTED, \
    UPDATES, SECONDS, EVAL_STEP, EVAL_VALUE, GROUP = range(13)
NONE = -1.0  # TRIAL when no trial is training


@dataclass(frozen=True)
class LiveView:
    """One reading of the record."""

    trial: int
    batch_size: int
    lr: float
    fraction: float  # of the trial's planned training, 0..1 (0 before its plan is known)
    planned_units: float  # the trial's whole plan, in the budget's unit (0 before its plan is known)
    seconds: float  # since the trial started (building the task included)
    eval_step: int | None
    eval_value: float | None
    group: int = 1  # the trials training with it as one fused group, itself included

    @property
    def spent_units(self) -> float:
        """What the running trials have trained: a fused group's members counted as this one."""
        return self.fraction * self.planned_units * self.group


class LiveTrial:
    """Shared memory written by the training process, read by a process forked after it was made."""

    def __init__(self) -> None:
        self.values = multiprocessing.RawArray("d", 13)  # mmap-backed: shared with forked children
        self.values[TRIAL] = NONE

    def begin(self, trial: int, batch_size: int, lr: float, group: int = 1, seconds: float = 0.0) -> None:
        """A trial starts (before its task is built): who it is (`lr`: the sampled base LR until
        `plan` gives the coupled one); no plan, no evaluation yet. A fused group shows one member
        (`group`: how many train together; `seconds`: how long that member has run)."""
        self._write({TRIAL: trial, BATCH_SIZE: batch_size, LR: lr, PLANNED_UPDATES: 0, PLANNED_UNITS: 0,
                     TIME_CAP: 0, STARTED: time.monotonic() - seconds, UPDATES: 0, SECONDS: 0,
                     EVAL_STEP: NONE, EVAL_VALUE: math.nan, GROUP: group})

    def plan(self, lr: float, planned_updates: int, planned_units: float, time_cap: float | None = None) -> None:
        """The trial's effective LR and horizon: `time_cap` seconds when the clock ends it, else
        `planned_updates`."""
        self._write({LR: lr, PLANNED_UPDATES: planned_updates, PLANNED_UNITS: planned_units, TIME_CAP: time_cap or 0})

    def evaluated(self, step: int, value: float) -> None:
        self.values[EVAL_VALUE] = value
        self.values[EVAL_STEP] = step

    def end(self) -> None:
        self._write({TRIAL: NONE})

    def _write(self, fields: dict[int, float]) -> None:
        values = self.values
        values[SEQ] += 1  # odd: being written
        for index, value in fields.items():
            values[index] = value
        values[SEQ] += 1

    def read(self) -> LiveView | None:
        """The trial training now, or None between trials."""
        values = self.values
        for _ in range(100):
            seq = values[SEQ]
            if seq % 2:
                continue
            trial, batch_size, lr, planned, units, cap, started = values[TRIAL:STARTED + 1]
            group = values[GROUP]
            if values[SEQ] == seq:
                break
        else:
            return None
        if trial == NONE:
            return None
        if cap > 0:
            fraction = values[SECONDS] / cap
        else:
            fraction = values[UPDATES] / planned if planned > 0 else 0.0
        step, value = values[EVAL_STEP], values[EVAL_VALUE]
        has_eval = step != NONE and not math.isnan(value)
        return LiveView(int(trial), int(batch_size), lr, min(max(fraction, 0.0), 1.0), units,
                        time.monotonic() - started, int(step) if has_eval else None, value if has_eval else None,
                        max(int(group), 1))
