"""One read of the study's trials per sampling step, instead of one per suggested parameter.

Asking for a trial reads the study's trials from the database several times: once for the retry
queue, once for the sampler's joint model, and once more for every parameter sampled on its own.
With Hyperband each of those also builds a bracket study (two more queries), and Optuna's
per-ask cache of the trials lives on that throwaway study, so it never hits. Each read loads
every unfinished trial with its parameters and attributes (seven queries), about 5 ms on SQLite.

`SnapshotStorage` is Optuna's own cached RDB storage (finished trials are cached, unfinished
ones re-read) with one addition: inside `with storage.snapshot():` the first read of a study's
trials is kept, and every later read in that block, on that thread, is answered from it. That
is the view Optuna's sampler already works from (`Study._get_trials(use_cache=True)` is reset
once per ask), kept for the whole ask. A trial created in the block is read back once from its
creation (Optuna's `Trial` reads it back at once: seven more queries). Writes go to the database
as before; outside a block, every read goes to the database.

Three reads cost less than Optuna's at any time, in or out of a block: the ask's look for a waiting
trial (the retry queue) reads the WAITING trials alone (two queries), not every unfinished trial of
the study with its parameters and attributes (seven queries and, at 64 workers, 64 trials built)
before a sampler that may need none of them (random; a sampler that does reads the trials once, as
before); a heartbeat is one statement, not four; and the search for stale trials reads two columns
of the running trials, not every running trial as ORM objects (`storage.heartbeats`).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Container, Iterator
from contextlib import contextmanager

from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from storage.heartbeats import adopt_trials_without_heartbeat, record_heartbeat, stale_trial_ids
from storage.optuna_private import CachedStorage, cached_trial, read_waiting_trials

logger = logging.getLogger("sweeps")


class SnapshotStorage(CachedStorage):
    """Optuna's `_CachedStorage` over an RDBStorage, whose reads can be frozen for one step."""

    def __init__(self, backend: RDBStorage):
        super().__init__(backend)
        self._frozen = threading.local()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Within the block, on this thread, the study's trials and identity are read once."""
        self._frozen.reads = {}
        try:
            yield
        finally:
            self._frozen.reads = None

    def _remembered(self, key: tuple, read, *args):
        reads = getattr(self._frozen, "reads", None)
        if reads is None:
            return read(*args)
        if key not in reads:
            reads[key] = read(*args)
        return reads[key]

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        reads = getattr(self._frozen, "reads", None)
        if only_waiting(states) and (reads is None or ("trials", study_id) not in reads):
            waiting = read_waiting_trials(self, study_id)  # Optuna's ask, looking for a queued trial
            return copy.deepcopy(waiting) if deepcopy else waiting
        if reads is None:
            return super().get_all_trials(study_id, deepcopy, states)
        trials = self._remembered(("trials", study_id), super().get_all_trials, study_id, False)
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        reads = getattr(self._frozen, "reads", None)
        if reads is not None:  # Optuna's Trial reads the new trial back at once: answer from its creation
            created = cached_trial(self, trial_id)
            if created is not None:
                reads[("created", trial_id)] = created
        return trial_id

    def get_trial(self, trial_id: int) -> FrozenTrial:
        reads = getattr(self._frozen, "reads", None)
        created = None if reads is None else reads.pop(("created", trial_id), None)
        if created is not None:  # once: a later read in the block sees what was written since
            return copy.deepcopy(created)
        return super().get_trial(trial_id)

    def record_heartbeat(self, trial_id: int) -> None:
        record_heartbeat(self, trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """What `optuna.storages.fail_stale_trials` asks the study's storage for (Optuna's private name:
        `_CachedStorage._get_stale_trial_ids`; tests/test_snapshot.py checks that it is still asked).
        Running trials with no heartbeat at all are dated first, to go stale a grace period on."""
        adopted = adopt_trials_without_heartbeat(self, study_id)
        if adopted:
            logger.info("running trials with no heartbeat (a worker that died right after its ask): %d, "
                        "failed and queued again after the grace period unless a worker beats for them", adopted)
        return stale_trial_ids(self, study_id)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._remembered(("id", study_name), super().get_study_id_from_name, study_name)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._remembered(("directions", study_id), super().get_study_directions, study_id)


def only_waiting(states: Container[TrialState] | None) -> bool:
    return isinstance(states, (tuple, list, set, frozenset)) and set(states) == {TrialState.WAITING}


@contextmanager
def snapshot(storage) -> Iterator[None]:
    """`storage.snapshot()` where the storage has one; otherwise every read goes through."""
    if isinstance(storage, SnapshotStorage):
        with storage.snapshot():
            yield
    else:
        yield
