"""Heartbeats for this process's open trials, so a worker that dies loses only its own trial.

Optuna's RDB heartbeat marks a trial alive; other workers fail trials whose heartbeat is older
than the grace period and queue them again. Trials asked ahead of time count as open too.
"""

from __future__ import annotations

import logging
import threading

import optuna

from storage.optuna_private import study_storage
from storage.retry import with_retry

logger = logging.getLogger("sweeps")


class Heartbeat:
    def __init__(self, study: optuna.Study):
        storage = study_storage(study)
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self.storage = storage
        self.interval = interval
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.beat, name="sweeps-heartbeat", daemon=True)

    @property
    def enabled(self) -> bool:
        return bool(self.interval)

    def start(self) -> None:
        if self.enabled:
            self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def add(self, trial_id: int) -> None:
        """The trial's first beat, retried while the store is unreachable (a server restart): it comes
        right after the ask, and a lost connection here would otherwise end the worker."""
        if self.enabled:
            with_retry(lambda: self.storage.record_heartbeat(trial_id), "recording a heartbeat")
            with self.lock:
                self.trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.discard(trial_id)

    def beat(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as err:  # the database may be restarting: the next beat retries
                    logger.warning("heartbeat for trial %d failed: %s", trial_id, err)


def stopped_ages(ages: list[float], interval: float) -> list[float]:
    """The heartbeat ages of stopped workers' trials: older than the interval, plus a second of slack."""
    return [age for age in ages if age > interval + 1]


def seconds_to_stale(ages: list[float], interval: float, grace_period: float | None) -> float | None:
    """Seconds until the first trial of a stopped worker goes stale; None when no worker stopped,
    or without a grace period."""
    stopped = stopped_ages(ages, interval)
    if not stopped or grace_period is None:
        return None
    return max(0.0, grace_period - max(stopped))


def stale_wait_text(ages: list[float], interval: float, grace_period: float | None) -> str:
    """What a worker waiting for other workers' running trials says, from their heartbeats' ages.

    A trial whose heartbeat missed a beat (older than the interval, plus a second of slack) has a
    stopped worker: it goes stale `grace_period` seconds after its last beat. The others are
    training somewhere, and the wait lasts until they finish."""
    left = seconds_to_stale(ages, interval, grace_period)
    if left is not None:
        stopped = stopped_ages(ages, interval)
        return (f"waiting for {len(stopped)} trial{'s' if len(stopped) != 1 else ''} of stopped workers "
                f"to go stale: {left:.0f} s left")
    n = len(ages)
    return f"waiting for {n} running trial{'s' if n != 1 else ''} of other workers to finish"
