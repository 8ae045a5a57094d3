"""Exit codes of every command: one table, so a script can tell the outcomes apart.

| code | meaning |
| ---- | ------- |
| 0    | done (a grid exhausted, a sampler that stopped the study, or a total budget spent also |
|      | ends here, with a note; `sweeps confirm`: the runs that fit the total budget finished) |
| 1    | the sweep did not deliver: too many failures in a row, every trial diverged, fewer |
|      | finished trials than asked for; or a report with no result; or no confirmation run |
|      | fits the total budget; or `sbatch` refused a job array (`sweeps slurm`)             |
| 2    | usage: the study file, a flag, a storage value or a task is invalid |
|      | (or the study file changes a stored study's search: sweeps.config.fingerprint) |
| 3    | the store cannot be opened or used (an unreachable server, a missing SQLite file) |
| 4    | the store has no such study |
| 130  | interrupted by Ctrl-C (the running trial is failed and queued again; rerun to resume) |
| 141  | its output went to a pipe that closed early (`sweeps report ... | head`): nothing more is |
|      | printed; what it writes to files and the store is unaffected |
| 143  | terminated by SIGTERM (the same) |
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
STORAGE = 3
NO_STUDY = 4
INTERRUPTED = 130
BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command a closed pipe stopped
TERMINATED = 143
