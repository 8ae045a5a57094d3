"""The search methods compared: each spends a task's total compute C on one seed and returns its
trials' records in the order their compute was spent, and its wall seconds."""

from __future__ import annotations

import copy
import math
import random
import tempfile
import time
from typing import Protocol

import optuna

from objectives.training.coupling import couple
from sweeps.config.study_file import parse_config
from sweeps.config.target import target_of
from sweeps.loop.runner import run_sweep
from sweeps.search.prior import use_prior
from sweeps.trial.record import HorizonRecord, aside_consumed, consumed, consumed_to_horizon, cooldown_consumed

from .records import Evaluation, Run, TrialRecord
from .tasks import BATCH_EXPONENTS, COUPLINGS, LR_RANGE, REFERENCE_BATCH, WARMUP_RANGE, TaskSpec
from .training import START_UP, EpochRun, PlainTrainer, RecipeRun, crn_config, crn_seed, eval_every, one_thread


class SearchMethod(Protocol):
    """What every method is (one strategy per function, as Optuna's samplers share BaseSampler):
    spend the task's total compute C on one seed, return the trials' records in the order their
    compute was spent and the wall seconds. `shape`: the baselines' LR schedule (cosine, or the
    service's wsd for NAME+wsd); `overrides`: a service variant's study-file sections (--compare)."""

    def __call__(self, spec: TaskSpec, seed: int, shape: str = "cosine", overrides: dict | None = None) -> Run: ...


# --- (a), (b), (d): the plain Optuna loop ---------------------------------------------------------

def plain_sweep(spec: TaskSpec, seed: int, method: str, shape: str = "cosine") -> Run:
    """(a) random, (b) plain TPE + median or (d) TPE + Optuna's HyperbandPruner (method
    "hyperband"), run until the method has used its total compute; `shape`: the LR schedule."""
    started = time.perf_counter()
    trainer = PlainTrainer(spec, started, shape)
    if method == "random":
        sampler, pruner = optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner()
    elif method == "hyperband":  # rungs in epochs (the step reported), 1 .. E, Optuna's default eta 3
        sampler = optuna.samplers.TPESampler(seed=seed)
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.epochs, reduction_factor=3)
    else:
        sampler, pruner = optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner()
    study = optuna.create_study(direction="maximize" if spec.maximize else "minimize", sampler=sampler, pruner=pruner)

    def objective(trial: optuna.Trial) -> float:
        batch_size = 2 ** trial.suggest_int("batch_size_log2", *BATCH_EXPONENTS)
        epochs = trial.suggest_int("epochs", 1, spec.epochs)
        trial_seed = seed * 100_003 + trial.number
        if method == "random":  # the service's space: base LR, coupling rule, warmup
            base_lr = trial.suggest_float("base_lr", *LR_RANGE, log=True)
            rule = trial.suggest_categorical("coupling", COUPLINGS)
            warmup = trial.suggest_float("warmup_fraction", *WARMUP_RANGE)
            lr = couple(rule, base_lr, batch_size, REFERENCE_BATCH).lr
            return trainer.train(trial_seed, batch_size, lr, epochs, warmup)
        lr = trial.suggest_float("lr", *LR_RANGE, log=True)

        def report(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        return trainer.train(trial_seed, batch_size, lr, epochs, 0.0, report)

    def enough(study: optuna.Study, _trial) -> None:
        if sum(r.examples for r in trainer.records) >= spec.total:
            study.stop()

    with one_thread():
        study.optimize(objective, callbacks=[enough], catch=(Exception,))
    return trainer.records, time.perf_counter() - started


def random_search(spec: TaskSpec, seed: int, shape: str = "cosine", overrides: dict | None = None) -> Run:
    """(a) Optuna's RandomSampler over the service's space, every trial trained to its end."""
    return plain_sweep(spec, seed, "random", shape)


def plain_optuna(spec: TaskSpec, seed: int, shape: str = "cosine", overrides: dict | None = None) -> Run:
    """(b) The objective people write by hand: TPE + MedianPruner, the LR searched directly."""
    return plain_sweep(spec, seed, "tpe", shape)


def optuna_hyperband(spec: TaskSpec, seed: int, shape: str = "cosine", overrides: dict | None = None) -> Run:
    """(d) (b) with Optuna's HyperbandPruner in place of the MedianPruner."""
    return plain_sweep(spec, seed, "hyperband", shape)


# --- (e) one_epoch_topk (Egele et al. 2023) -------------------------------------------------------

def topk_plan(spec: TaskSpec) -> tuple[int, int]:
    """(N, K) for one_epoch_topk: N configurations trained one epoch each, the best K finished to
    E epochs, with N + K (E - 1) = F E epochs of the training set, i.e. exactly the total compute
    C = F full trials. K spends about half of C on finishing (K = round(F E / (2 (E - 1)))), so
    N is about F E / 2 screening epochs; with E = 1 there is nothing to finish and N = K = F."""
    full, epochs = spec.full_trials, spec.epochs
    if epochs == 1:
        return full, full
    k = max(1, round(full * epochs / (2 * (epochs - 1))))
    return full * epochs - k * (epochs - 1), k


def one_epoch_topk_sweep(spec: TaskSpec, seed: int, picked: list[int] | None = None,
                         shape: str = "cosine") -> Run:
    """(e) Egele et al. 2023's one-epoch baseline: N random configurations (batch size and LR from
    the plain loop's space, the whole E epochs planned, no warmup) trained one epoch each, then the
    K best by that first evaluation resumed from where they stopped and trained to E epochs.

    Records in the order the compute was spent: N one-epoch records, then one record per finished
    configuration holding only its epochs 2..E (examples counted from its resumption), so
    compute_to_target counts every example once, in order. A configuration that diverges is
    dropped (its epoch still counts); one that diverges while finishing leaves its rest unspent.
    `picked`, when given, receives the screening indices of the configurations finished.
    """
    started = time.perf_counter()
    trainer = PlainTrainer(spec, started, shape)
    n, k = topk_plan(spec)
    rng = random.Random(seed)
    sign = -1.0 if spec.maximize else 1.0  # sort ascending on sign * value: best first
    best: list[tuple[float, int, EpochRun]] = []
    with one_thread():
        for i in range(n):
            batch_size = 2 ** rng.randint(*BATCH_EXPONENTS)
            lr = math.exp(rng.uniform(math.log(LR_RANGE[0]), math.log(LR_RANGE[1])))
            record = TrialRecord(0, [])
            trainer.records.append(record)
            run = trainer.start(seed * 100_003 + i, batch_size, lr, spec.epochs, 0.0)
            try:
                value = run.next_epoch(record)
            except optuna.TrialPruned:
                continue
            best.append((sign * value, i, run))
            best.sort(key=lambda b: (b[0], b[1]))
            del best[k:]  # only the K best so far stay in memory
        for _, i, run in best:
            if picked is not None:
                picked.append(i)
            record = TrialRecord(0, [])
            trainer.records.append(record)
            try:
                while run.epoch < spec.epochs:
                    run.next_epoch(record)
            except optuna.TrialPruned:
                pass
    return trainer.records, time.perf_counter() - started


def one_epoch_topk(spec: TaskSpec, seed: int, shape: str = "cosine", overrides: dict | None = None) -> Run:
    """(e) N configurations one epoch each, the K best finished (one_epoch_topk_sweep)."""
    return one_epoch_topk_sweep(spec, seed, shape=shape)


# --- (c) the service ------------------------------------------------------------------------------

def service_study(spec: TaskSpec, seed: int, overrides: dict | None = None) -> dict:
    """The study file (c) runs: defaults for everything but the task, budget and search block."""
    data = {
        "study": {"name": f"eff-{spec.name}-{seed}", "metric": spec.metric,
                  "direction": "maximize" if spec.maximize else "minimize",
                  "n_trials": spec.full_trials, "seed": seed},
        "objective": {"task": spec.task, "optimizer": spec.optimizer, "options": dict(spec.options)},
        "budget": {"unit": "examples", "per_trial": spec.per_trial},
        "search": {
            "batch_size": {"low": 2 ** BATCH_EXPONENTS[0], "high": 2 ** BATCH_EXPONENTS[1], "log": True,
                           "power_of_two": True},
            "epochs": {"low": 1, "high": spec.epochs},
            "base_lr": {"low": spec.lr_range[0], "high": spec.lr_range[1], "log": True},
            "coupling": list(COUPLINGS),
            "reference_batch_size": REFERENCE_BATCH,
            "warmup_fraction": {"low": WARMUP_RANGE[0], "high": WARMUP_RANGE[1]},
        },
    }
    if spec.weight_decay:
        data["objective"]["weight_decay"] = spec.weight_decay
    if spec.factory:  # issue 30's tasks: a Dataset is read in this process, as the baselines read it
        data["objective"]["loader"] = {"workers": 0}
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(copy.deepcopy(values))
    if data["budget"].get("horizons") or data["search"].get("epochs", 0) is None:
        data["search"].pop("epochs", None)  # with horizons the length is answered, not searched
    return data


def service_sweep(spec: TaskSpec, seed: int, overrides: dict | None = None, crn: bool = False) -> Run:
    """run_sweep until the study's trials have used the total compute; more trials are added by
    resuming the study as a further worker (its own sampler seed), as a user would. `crn` (issue
    30): its start-up trials (start_up_of) are enqueued at crn_config(spec, seed, k) before the
    sweep starts, and the compute counted includes spec.eval_charge per evaluation."""
    with tempfile.TemporaryDirectory() as folder:
        data = service_study(spec, seed, overrides)
        data["study"]["storage"] = f"sqlite:///{folder}/efficiency.db"
        data["objective"].setdefault("fuse", "off")  # as under the frozen protocol (objective.fuse defaulted to off)
        config = parse_config(data, folder)
        started_wall, started = time.time(), time.perf_counter()
        prior = None
        if crn:
            queued = optuna.create_study(storage=data["study"]["storage"], study_name=data["study"]["name"],
                                         direction=data["study"]["direction"])
            if config.search.lr_range_test is not None:  # measured now, on the study file's n_trials (C's)
                use_prior(queued, config, spec.full_trials)
                prior = config.search.measured
            for k in range(start_up_of(config)):
                queued.enqueue_trial(crn_within(crn_config(spec, seed, k), spec, prior))
        n_trials, chunk = 2 * spec.full_trials, 0
        while True:
            study = run_sweep(config, target_of(config, n_trials=n_trials), show_progress=False,
                              worker_index=chunk)
            spent = sum(consumed(t, "examples") for t in study.trials)  # cooldown branches included
            spent += prior.examples if prior is not None else 0  # the LR range test's training, first
            if crn:
                spent += spec.eval_charge * sum(evaluations_made(t) for t in study.trials)
            if spent >= spec.total:
                break
            per_trial = spent / max(len(study.trials), 1)
            n_trials += max(4, math.ceil((spec.total - spent) / max(per_trial, 1.0)) + 2)
            chunk += 1
        wall = time.perf_counter() - started
        decay = config.schedule.decay_fraction if config.schedule.cooldown_evaluations else None
        branched_below = (1.0 - decay) * spec.per_trial if decay is not None else math.inf
        records = records_from_study(study, started_wall, branched_below, details=crn)
        if prior is not None:  # charged before the first trial: an entry with no evaluation
            records.insert(0, TrialRecord(prior.examples, [], params={"lr_range_test": prior.to_attrs()},
                                          started=0.0, ended=0.0, evaluations_made=0))
        return records, wall


def crn_within(params: dict, spec: TaskSpec, prior) -> dict:
    """A start-up draw in the space the service searches: with a measured LR prior, the base LR at
    the same quantile (log scale) of the prior's range as of the shared range; with its batch cap
    (`cap_batch`), the batch-size exponent at the same quantile of the capped exponents, rounded;
    the rest as drawn."""
    if prior is None:
        return params
    low, high = spec.lr_range
    q = math.log(params["base_lr"] / low) / math.log(high / low)
    drawn = {**params, "base_lr": prior.low * (prior.high / prior.low) ** q}
    if prior.batch_high is not None:
        first, last = BATCH_EXPONENTS
        top = min(last, max(first, int(math.log2(prior.batch_high))))
        share = (params["batch_size_log2"] - first) / (last - first)
        drawn["batch_size_log2"] = first + round(share * (top - first))
    return drawn


def start_up_of(config) -> int:
    """How many of the service's first trials are start-up draws (enqueued at crn_config): its
    model-based sampler's n_startup_trials (a configuration that starts its model sooner keeps
    that), START_UP for a sampler without a model phase."""
    return config.sampler.n_startup_trials if config.sampler.name in ("tpe", "gp") else START_UP


def cooldown_shares(steps: list[int], branched_below: float) -> list[float]:
    """The share of a trial's cooldown examples spent by each evaluation, cumulated: a branch at
    step s trains cooldown_fraction x the updates done, so about in proportion to s, and only the
    evaluations before the decay (step < branched_below) branch."""
    weights = [float(s) if s < branched_below else 0.0 for s in steps]
    total, done, shares = sum(weights), 0.0, []
    for w in weights:
        done += w
        shares.append(done / total if total else 0.0)
    return shares


def records_from_study(study: optuna.Study, started: float, branched_below: float = math.inf,
                       details: bool = False) -> list[TrialRecord]:
    """The service's trials in the order they ran, from what each recorded.

    The sweep asks a trial ahead while the previous one trains, so a trial's own start time is not
    its training start; its training window is taken as (previous trial's end, its end], and an
    evaluation's time is interpolated in that window by examples. Cooldown branches count as
    compute: each evaluation's examples include the branches made up to it (`cooldown_shares`).
    """
    records = []
    window_start = 0.0
    for trial in sorted(study.trials, key=lambda t: t.number):
        examples = int(trial.user_attrs.get("examples_seen", 0))
        branches = int(cooldown_consumed(trial.user_attrs, "examples"))
        end = trial.datetime_complete.timestamp() - started if trial.datetime_complete else window_start
        evals = []
        steps = sorted(trial.intermediate_values)
        for step, share_of_branches in zip(steps, cooldown_shares(steps, branched_below)):
            share = min(step / examples, 1.0) if examples else 1.0
            at = (min(step, examples) if examples else step) + branches * share_of_branches
            evals.append(Evaluation(at, trial.intermediate_values[step], window_start + share * (end - window_start)))
        record = TrialRecord(examples + branches, evals)
        answered = [HorizonRecord.from_attrs(h) for h in trial.user_attrs.get("horizons") or []]
        if details and answered:  # issue 30: horizons, each known once its branch is trained
            record = horizon_record(trial, answered, window_start, end)
        if details:  # issue 30: each trial's parameters, seed and timestamps
            record.params = dict(trial.params, trial=trial.number, seed=trial.user_attrs.get("seed"),
                                 state=trial.state.name)
            record.started = trial.datetime_start.timestamp() - started if trial.datetime_start else None
            record.ended = end
        records.append(record)
        window_start = max(window_start, end)
    return records


def service(spec: TaskSpec, seed: int, shape: str = "cosine", overrides: dict | None = None) -> Run:
    """(c) The service with its defaults, or a variant's `overrides`; its schedule is the study file's."""
    return service_sweep(spec, seed, overrides)


# --compare: the service with study-file sections over its defaults, one variant each
VARIANTS = {
    "service": None,  # the defaults
    "sampler=random": {"sampler": {"name": "random"}},
    "pruner=median": {"pruner": {"name": "median"}},
    "pruner=sha": {"pruner": {"name": "successive_halving"}},
    "pruner=none": {"pruner": {"name": "none"}},
    "eval_every=per/5": {"budget": {"eval_every": "5"}},
    "eval_every=per/20": {"budget": {"eval_every": "20"}},
    "coupling=[none]": {"search": {"coupling": ["none"]}},
    "coupling=[sqrt]": {"search": {"coupling": ["sqrt"]}},
    "coupling=[linear]": {"search": {"coupling": ["linear"]}},
    "coupling=[none,linear,sqrt]": {"search": {"coupling": ["none", "linear", "sqrt"]}},
    # issue 17's candidates: a warmup-stable-decay schedule (the default since issue 17), with rung
    # evaluations on a cooldown branch (their examples counted as compute), and the pruner's noise
    # guard; the schedule=cosine ones are the defaults before issue 17, alone and with each change
    "schedule=wsd": {"schedule": {"name": "wsd"}},
    "schedule=wsd+cooldown": {"schedule": {"name": "wsd", "cooldown_evaluations": True}},
    "noise_margin=1": {"pruner": {"noise_margin": 1.0}},
    "noise_margin=2": {"pruner": {"noise_margin": 2.0}},
    "schedule=cosine": {"schedule": {"name": "cosine"}},
    "schedule=cosine,pruner=none": {"schedule": {"name": "cosine"}, "pruner": {"name": "none"}},
    "schedule=cosine,sampler=random": {"schedule": {"name": "cosine"}, "sampler": {"name": "random"}},
    "schedule=cosine,noise_margin=1": {"schedule": {"name": "cosine"}, "pruner": {"noise_margin": 1.0}},
    "schedule=cosine,noise_margin=2": {"schedule": {"name": "cosine"}, "pruner": {"noise_margin": 2.0}},
}


def resolve_variant(overrides: dict | None, spec: TaskSpec) -> dict | None:
    if overrides is None:
        return None
    out = copy.deepcopy(overrides)
    if "budget" in out and isinstance(out["budget"].get("eval_every"), str):
        out["budget"]["eval_every"] = max(1, spec.per_trial // int(out["budget"]["eval_every"]))
    return out


# --- the methods by name --------------------------------------------------------------------------

SEARCH_METHODS: dict[str, SearchMethod] = {
    "random": random_search,
    "plain_optuna": plain_optuna,
    "optuna_hyperband": optuna_hyperband,
    "one_epoch_topk": one_epoch_topk,
    "service": service,
}
BASELINES = tuple(name for name in SEARCH_METHODS if name != "service")
METHODS = tuple(SEARCH_METHODS)
# The same baselines training with the service's wsd schedule instead of cosine: since issue 17 the
# service's default, so these are the like-for-like baselines (the recipe the same, only the search
# differs); not in the default grid, which was fixed before the change (`--methods random+wsd ...`).
WSD = "+wsd"
WSD_BASELINES = tuple(b + WSD for b in BASELINES)


def run_method(method: str, spec: TaskSpec, seed: int, overrides: dict | None = None) -> Run:
    """The method named (NAME+wsd: that baseline with the wsd schedule; crn_*: issue 30's) on one
    task and seed."""
    if method.startswith("crn_"):
        return CRN_METHODS[method](spec, seed, "wsd", overrides)
    shape = "wsd" if method.endswith(WSD) else "cosine"
    return SEARCH_METHODS[method.removesuffix(WSD)](spec, seed, shape, overrides)


# --- issue 30: the baselines on the service's recipe, with common random numbers ------------------
# Every method below trains with RecipeRun (the service's plan, wsd schedule and warmup, the task's
# optimizer, evaluations on the service's grid), its k-th trial under crn_seed(seed, k), its first
# START_UP trials (all of random search's) at crn_config(seed, k), and stops once its compute, every
# evaluation charged at spec.eval_charge training examples, reaches the total C.

class Ledger:
    """A method's records in the order their compute was spent, and that compute with
    evaluations charged (the stop rule every issue-30 method applies before starting a trial)."""

    def __init__(self, spec: TaskSpec):
        self.spec, self.records = spec, []
        self.started = time.perf_counter()

    def add(self, record: TrialRecord) -> TrialRecord:
        self.records.append(record)
        return record

    @property
    def spent(self) -> float:
        return sum(r.examples + len(r.evaluations) * self.spec.eval_charge for r in self.records)

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.spec.total

    def run(self) -> Run:
        return self.records, time.perf_counter() - self.started


def recipe_run(ledger: Ledger, k: int, config: dict, seed: int, epochs: int | None = None,
               length: float | None = None) -> RecipeRun:
    """The k-th trial of a run on seed `seed`, its record added to the ledger."""
    run = RecipeRun(ledger.spec, crn_seed(seed, k), 2 ** int(config["batch_size_log2"]), float(config["base_lr"]),
                    float(config["warmup_fraction"]), epochs=epochs, length=length, started=ledger.started,
                    params=dict(config, trial=k))
    ledger.add(run.record)
    return run


def finish(run: RecipeRun, on_value=None) -> float | None:
    """Train the run to its end (or until `on_value(step, value)` says stop); its best value."""
    values = []
    try:
        while not run.done:
            value = run.advance()
            values.append(value)
            if on_value is not None and on_value(run.last_step, value):
                run.close()
                break
    except optuna.TrialPruned:
        pass
    sign = 1.0 if run.spec.maximize else -1.0
    return max(values, key=lambda v: sign * v) if values else None


def random30(spec: TaskSpec, seed: int, shape: str = "wsd", overrides: dict | None = None) -> Run:
    """Random search: every trial's configuration is crn_config(seed, k), trained to its end."""
    ledger = Ledger(spec)
    with one_thread():
        k = 0
        while not ledger.exhausted:
            config = crn_config(spec, seed, k)
            finish(recipe_run(ledger, k, config, seed, epochs=None if spec.horizons else config["epochs"]))
            k += 1
    return ledger.run()


def optuna30(spec: TaskSpec, seed: int, pruner: optuna.pruners.BasePruner) -> Run:
    """The plain loop on the service's recipe and space: Optuna's TPESampler as a user builds it
    (its defaults: univariate, 10 start-up trials, here the shared crn_config draws), `pruner`,
    a report at every evaluation (step = examples into the trial, the service's steps)."""
    ledger = Ledger(spec)
    study = optuna.create_study(direction="maximize" if spec.maximize else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    for k in range(START_UP):
        study.enqueue_trial(crn_config(spec, seed, k))

    def objective(trial: optuna.Trial) -> float:
        config = {"batch_size_log2": trial.suggest_int("batch_size_log2", *BATCH_EXPONENTS),
                  "base_lr": trial.suggest_float("base_lr", *spec.lr_range, log=True),
                  "warmup_fraction": trial.suggest_float("warmup_fraction", *WARMUP_RANGE)}
        if not spec.horizons:  # with the service's horizons the length is answered, not searched, by all
            config["epochs"] = trial.suggest_int("epochs", 1, spec.epochs)
        run = recipe_run(ledger, trial.number, config, seed, epochs=config.get("epochs"))

        def report(step: int, value: float) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        best = finish(run, report)
        if best is None:
            raise optuna.TrialPruned()
        return best

    def enough(study: optuna.Study, _trial) -> None:
        if ledger.exhausted:
            study.stop()

    with one_thread():
        study.optimize(objective, callbacks=[enough], catch=(Exception,))
    return ledger.run()


def tpe_median30(spec: TaskSpec, seed: int, shape: str = "wsd", overrides: dict | None = None) -> Run:
    """(b) on the recipe: TPE + Optuna's MedianPruner with its defaults."""
    return optuna30(spec, seed, optuna.pruners.MedianPruner())


def hyperband30(spec: TaskSpec, seed: int, shape: str = "wsd", overrides: dict | None = None) -> Run:
    """TPE + Optuna's HyperbandPruner with the service's pruner's resources: min_resource one
    evaluation interval (the service's first rung), max_resource the per-trial budget, eta 3."""
    every = int(eval_every(spec))
    return optuna30(spec, seed, optuna.pruners.HyperbandPruner(min_resource=every, max_resource=spec.per_trial,
                                                              reduction_factor=3))


def sha30(spec: TaskSpec, seed: int, shape: str = "wsd", overrides: dict | None = None) -> Run:
    """TPE + Optuna's SuccessiveHalvingPruner, min_resource one evaluation interval, eta 3."""
    every = int(eval_every(spec))
    return optuna30(spec, seed, optuna.pruners.SuccessiveHalvingPruner(min_resource=every, reduction_factor=3))


def topk30_plan(spec: TaskSpec) -> tuple[int, int, int]:
    """(N, K, s) for one_epoch_topk on the grid: one epoch rounded to the evaluation grid is s of
    the 10 intervals of a full trial (at least 1), N configurations screened s intervals each and
    K finished (10 - s more), N s + K (10 - s) <= 10 F intervals with K spending about half of it.
    Every interval holds one evaluation, so the plan is the same with evaluations charged. With
    one epoch the whole trial (s = 10), it is F configurations trained to the end (K = 0)."""
    s = max(1, round(10 / spec.epochs))
    if s >= 10:  # one epoch is the whole trial: F configurations trained to the end, nothing to finish
        return spec.full_trials, 0, 10
    units = 10 * spec.full_trials
    k = max(1, round(units / (2 * (10 - s))))
    return (units - k * (10 - s)) // s, k, s


def topk30(spec: TaskSpec, seed: int, shape: str = "wsd", overrides: dict | None = None) -> Run:
    """One epoch each, then finish the top K: N configurations (crn_config's, the whole budget
    planned) trained s evaluation intervals each, the K best by their last value resumed and
    trained to the end; a resumed run's compute goes to a record of its own, counted from its
    resumption, so the records stay in the order the compute was spent."""
    ledger = Ledger(spec)
    n, k_best, s = topk30_plan(spec)
    sign = -1.0 if spec.maximize else 1.0
    kept: list[tuple[float, int, RecipeRun]] = []
    with one_thread():
        for i in range(n):
            if ledger.exhausted:
                break
            run = recipe_run(ledger, i, crn_config(spec, seed, i), seed)
            value = None
            try:
                for _ in range(s):
                    value = run.advance()
            except optuna.TrialPruned:
                continue
            if value is None:
                continue
            kept.append((sign * value, i, run))
            kept.sort(key=lambda b: (b[0], b[1]))
            del kept[k_best:]
        for _, _i, run in kept:
            if ledger.exhausted:
                break
            screened = run.record
            run.record = ledger.add(TrialRecord(0, [], params=dict(screened.params or {}, resumed=True),
                                                started=time.perf_counter() - ledger.started))
            offset = screened.examples
            finish(run)
            for ev in run.record.evaluations:
                ev.examples -= offset
    return ledger.run()


def evaluations_made(trial: optuna.trial.FrozenTrial) -> int:
    """Every evaluation a service trial made: its reported ones, or with horizons its run's (the
    longest horizon's curve) and each shorter horizon's branch's (its curve after the branch point)."""
    answered = [HorizonRecord.from_attrs(h) for h in trial.user_attrs.get("horizons") or []]
    if not answered:
        return len(trial.intermediate_values)
    return len(answered[-1].curve or []) + sum(len(branch_curve(h)) for h in answered[:-1])


def branch_curve(h: HorizonRecord) -> list:
    """The evaluations a horizon's branch made itself (those after its branch point)."""
    at = h.examples - h.branch_examples
    return [c for c in h.curve or [] if c[0] > at]


def horizon_record(trial: optuna.trial.FrozenTrial, answered: list[HorizonRecord], window_start: float,
                   end: float) -> TrialRecord:
    """A service trial with horizons: an evaluation per horizon answered, its value the
    horizon's (what the trial reported at its step), known once the run reached the horizon's
    branch point and the branches up to it were trained (`consumed_to_horizon`), with the
    evaluations made by then (the run's up to there and those branches'); the trial's compute its
    run and every branch (`aside_consumed`)."""
    attrs = trial.user_attrs
    examples = int(attrs.get("examples_seen", 0))
    total = examples + aside_consumed(attrs, "examples")
    evals = []
    for i, h in enumerate(answered):
        value = trial.intermediate_values.get(h.step, h.value)
        if value is None or not math.isfinite(value):
            continue
        at = consumed_to_horizon(attrs, answered, i, "examples")
        point = h.examples - h.branch_examples  # the run's examples at the branch point
        run_evals = sum(1 for c in answered[-1].curve or [] if c[0] <= point)
        made = run_evals + sum(len(branch_curve(g)) for g in answered[: i + 1] if g is not answered[-1])
        share = min(at / total, 1.0) if total else 1.0
        evals.append(Evaluation(at, value, window_start + share * (end - window_start), max(made, 1)))
    return TrialRecord(total, evals, evaluations_made=evaluations_made(trial))


def service30(spec: TaskSpec, seed: int, shape: str = "wsd", overrides: dict | None = None) -> Run:
    """The service with its configuration (the frozen one: defaults plus `overrides`), its first
    START_UP trials enqueued at crn_config (the same draws as the baselines'), its trials' seeds
    its own trial_seed (= crn_seed), and its sweep extended until its compute with evaluations
    charged reaches C."""
    return service_sweep(spec, seed, overrides, crn=True)


def lazy(name: str) -> SearchMethod:
    """A method of multifidelity.py, imported when run (its packages are optional: the bench extra)."""
    def method(spec: TaskSpec, seed: int, shape: str = "wsd", overrides: dict | None = None) -> Run:
        from . import multifidelity

        return getattr(multifidelity, name)(spec, seed, shape, overrides)

    method.__name__ = name
    return method


# Issue 30's methods by name, in the grid's order (the protocol's: docs/search_efficiency.md); all on
# the service's recipe with common random numbers and charged evaluation. crn_sha is runnable but
# not in the default grid (one of SHA and Hyperband, the issue says; Hyperband is the service's pruner).
CRN_METHODS: dict[str, SearchMethod] = {
    "crn_random": random30,
    "crn_tpe_median": tpe_median30,
    "crn_hyperband": hyperband30,
    "crn_dehb": lazy("dehb30"),
    "crn_bohb": lazy("bohb30"),
    "crn_topk": topk30,
    "crn_service": service30,
    "crn_sha": sha30,
}
CRN_GRID = tuple(m for m in CRN_METHODS if m != "crn_sha")
CRN_SERVICE = "crn_service"
CRN_BASELINES = tuple(m for m in CRN_METHODS if m != CRN_SERVICE)
