"""Search efficiency: compute to target for random search, a plain Optuna loop and the service.

Each method gets the same total compute per seed (C = `full_trials` x the per-trial budget, in
training examples) on the same task, search ranges and per-trial budget (E epochs of the training
set), and we measure how much of it it spends before any trial first reaches within MARGIN of the
task's reference: by default (--reference seed_mean) the mean over 8 seeds (--noise) of the best
evaluation of the best configuration of a 60-trial grid (--make-reference,
benchmarks/search_efficiency_reference.json); --reference grid_max uses the grid's best single trial,
as the figures before issue 17 did:

(a) random: Optuna's RandomSampler over the service's space (batch size, epochs, base LR, warmup,
    the coupling rules in COUPLINGS), every trial trained to its end, no pruning;
(b) plain:  the objective people write by hand: TPE + MedianPruner, `trial.report` once per epoch
    (step = epoch, so trials of different batch size are compared at different compute), the LR
    searched directly, no coupling, no warmup;
(c) service: `sweeps.loop.runner.run_sweep` with the service's defaults (sampler, pruner, eval_every,
    schedule, coupling) over the same ranges, in a temporary SQLite store;
(d) optuna_hyperband: (b) with Optuna's HyperbandPruner (min_resource 1, max_resource E epochs,
    reduction factor 3) in place of the MedianPruner, `trial.report` once per epoch;
(e) one_epoch_topk (Egele et al. 2023): N random configurations (batch size, LR) trained one epoch
    each, the K best by that value resumed and trained to E epochs; N + K (E - 1) = F E epochs,
    exactly C (topk_plan: K spends about half of C on finishing).

(a) and (b) train with the same recipe as the service (SGD with momentum 0.9, LR cosine-decayed to
zero at the trial's last planned update, data resident as tensors, the task's factory for model
and data, one intra-op thread like the service on 2 cores) and evaluate once per epoch; the
compute they use is counted here (examples per update). The service's trials record
`examples_seen` and their whole learning curve (step = examples into the trial).

Compute to target = the examples of all earlier trials + the examples into the hitting trial at
its first evaluation within MARGIN of the reference; wall seconds likewise, from the start of the
method's sweep. A method that does not get there within C is censored at C ("not reached").

    python benchmarks/search_efficiency.py [--quick] [--seeds 5] [--tasks ...] [--compare]
    python benchmarks/search_efficiency.py --make-reference [--tasks ...]   # (re)make reference entries
    python benchmarks/search_efficiency.py --noise [--tasks ...]   # noise of the reference configuration
    python benchmarks/search_efficiency.py --tasks split --seeds 8 --save runs.jsonl [--estimate]

Split (docs/search_efficiency.md): development tasks digits_mlp and teacher_mlp (the defaults are
chosen there), held-out tasks char_lm and resnet_synthetic (reported apart; the defaults are not
changed after seeing them). `--tasks development|held_out|split` name the groups; --quick runs the
development tasks only. `--save FILE` appends each finished (task, method, seed) run as one JSON
line as it completes, and a rerun with the same FILE reads those back instead of running them, so a
stopped run resumes; the time estimate of the whole grid and of what is left is printed at the
start and after each run. `--noise` writes search_efficiency_noise.json; the analysis adds a
second margin of twice that noise per task.
    python benchmarks/search_efficiency.py --tasks char_lm [--corpus-mb 20]   # see below

char_lm (only when named in --tasks): a small character GPT (CHAR_LM_OPTIONS) on the first
--corpus-mb MB of the standard library's *.py files in sorted order (build_corpus; its sha256 and
the Python version are printed and saved with --save, as the corpus differs between versions),
metric val_loss (minimize). It has no reference: the target is the best value any method and seed
reached within C in the same runs, worsened by MARGIN.

Per group (development, held-out) and margin, a line `<group> <margin>: speedup_vs_<baseline>=<x> ...`:
geometric means over tasks of median(compute to target of the baseline) / median(compute to target
of the service), each task's ratio printed on the line before it.
`--compare` instead runs service variants (sampler, pruner, eval_every, coupling list).

--protocol crn: issue 30's protocol (docs/search_efficiency.md, "Issue 30: protocol"): the baselines
crn_random, crn_tpe_median, crn_hyperband, crn_dehb, crn_bohb, crn_topk on the service's recipe and
evaluation points, common random numbers, evaluation charged as compute, the held-out tasks
held_out_30, 12 seeds of 20 full trials; --measure-charge, --time-trials, --shard I/N, --service-config.
    python benchmarks/search_efficiency.py --protocol crn --quick --seeds 2   # smoke (development tasks)

The code is in benchmarks/search_efficiency_lib/: tasks.py (tasks, ranges, char_lm corpus), methods.py
(the methods above, one function each, by name in SEARCH_METHODS), training.py (the baselines' training
loop), grid.py (the grid runner, --save/--load), analysis.py (compute to target, tables, speedups),
reference.py (--make-reference, --noise, the reference protocols), figure.py (--figure), cli.py,
multifidelity.py (DEHB and BOHB, the bench extra) and stream_task.py (the held-out task read from disk).
"""

from __future__ import annotations

from search_efficiency_lib.cli import main  # beside this script

if __name__ == "__main__":
    main(description=__doc__.split("\n")[0])
