"""Issue 30's model-based multi-fidelity baselines on the service's recipe: DEHB (the `dehb`
package) and BOHB (hpbandster's BOHB model, the KDE config generator, driven by a sequential
Hyperband loop here, without its Pyro name server). Both are in the `bench` extra; a missing
package makes its method raise MissingPackage (the tests skip it, the grid says so).

Fidelity is a trial's length on the service's evaluation grid: a full trial is 10 intervals
(`eval_every`), brackets eta = 3 from 10/9 to 10 intervals, each rounded to the grid (1, 3, 10
intervals: the minimum resource is the service's first rung). A configuration at fidelity b is
trained from scratch with its schedule planned for b examples (wsd decayed at its own end), its
value the last evaluation; promotion retrains (no checkpoint reuse), as both packages do.
Trial k trains under crn_seed(seed, k); BOHB's draws before its model exists are crn_config's
where the space agrees (no epochs: fidelity is the length); DEHB evaluates mutants of its
population from its first job, so only its population's first members are crn_config's."""

from __future__ import annotations

import math
import tempfile

import numpy as np

from .methods import Ledger, finish, recipe_run
from .records import Run
from .tasks import BATCH_EXPONENTS, WARMUP_RANGE, TaskSpec
from .training import START_UP, crn_config, eval_every, one_thread

ETA = 3
MAX_UNITS = 10  # a full trial, in evaluation intervals


class MissingPackage(ImportError):
    """A baseline's optional package (the `bench` extra) is not installed."""


def config_space(spec: TaskSpec, seed: int):
    try:
        import ConfigSpace as CS
    except ImportError as err:
        raise MissingPackage("ConfigSpace (pip install -e .[bench])") from err
    cs = CS.ConfigurationSpace(seed=seed)
    cs.add(CS.UniformIntegerHyperparameter("batch_size_log2", *BATCH_EXPONENTS))
    cs.add(CS.UniformFloatHyperparameter("base_lr", *spec.lr_range, log=True))
    cs.add(CS.UniformFloatHyperparameter("warmup_fraction", *WARMUP_RANGE))
    return cs


def length_of(spec: TaskSpec, fidelity: float) -> float:
    """Examples planned for a fidelity in intervals, rounded to the grid (the full budget at the top)."""
    units = min(MAX_UNITS, max(1, round(fidelity)))
    return float(spec.per_trial) if units >= MAX_UNITS else units * eval_every(spec)


def evaluate(ledger: Ledger, k: int, config: dict, seed: int, spec: TaskSpec, fidelity: float) -> float:
    """Train trial k at this fidelity; its last value as a loss to minimise (inf when it diverged)."""
    run = recipe_run(ledger, k, config, seed, length=length_of(spec, fidelity))
    finish(run)
    values = [e.value for e in run.record.evaluations]
    if not values or not math.isfinite(values[-1]):
        return math.inf
    return -values[-1] if spec.maximize else values[-1]


def dehb30(spec: TaskSpec, seed: int, shape: str = "wsd", overrides: dict | None = None) -> Run:
    """DEHB (Awad et al. 2021) through its ask/tell interface, one worker, until C is spent."""
    try:
        from dehb import DEHB
    except ImportError as err:
        raise MissingPackage("dehb (pip install -e .[bench])") from err
    cs = config_space(spec, seed)
    ledger = Ledger(spec)
    with tempfile.TemporaryDirectory() as folder, one_thread():
        dehb = DEHB(cs=cs, dimensions=len(list(cs.values())), min_fidelity=MAX_UNITS / ETA**2,
                    max_fidelity=MAX_UNITS, eta=ETA, n_workers=1, output_path=folder, seed=seed,
                    log_level="ERROR", save_freq=None)
        seed_population(dehb, cs, spec, seed)
        k = 0
        while not ledger.exhausted:
            job = dehb.ask()
            loss = evaluate(ledger, k, dict(job["config"]), seed, spec, job["fidelity"])
            dehb.tell(job, {"fitness": loss if math.isfinite(loss) else 1e9,
                            "cost": float(ledger.records[-1].examples)})
            k += 1
    return ledger.run()


def seed_population(dehb, cs, spec: TaskSpec, seed: int) -> None:
    """The first members of DEHB's lowest-fidelity population set to crn_config(seed, 0..), as
    many as START_UP and the population allow; the rest stay DEHB's own draws. DEHB evaluates
    mutants of its population from its very first job (DE mutation and crossover with the parent,
    `_acquire_config`), so it has no start-up draws to share: its first configurations are
    derived from the CRN draws, not equal to them."""
    low = min(dehb.de)
    population = dehb.de[low].population
    for i in range(min(START_UP, len(population))):
        population[i] = to_vector(cs, crn_config(spec, seed, i))


def to_vector(cs, values: dict) -> np.ndarray:
    """The inverse of DEHB's vector_to_configspace (the unit hypercube, log-scaled where the
    hyperparameter is), in the order ConfigSpace lists the space's hyperparameters."""
    out = []
    for hyper in cs.values():
        value = float(values[hyper.name])
        if hyper.log:
            out.append(math.log(value / hyper.lower) / math.log(hyper.upper / hyper.lower))
        else:
            out.append((value - hyper.lower) / (hyper.upper - hyper.lower))
    return np.array(out)


class Job:
    """What hpbandster's config generator reads from a finished run."""

    def __init__(self, config: dict, budget: float, loss: float):
        self.kwargs = {"config": config, "budget": budget}
        self.result = {"loss": loss}
        self.exception = None
        self.timestamps = {}


def bohb30(spec: TaskSpec, seed: int, shape: str = "wsd", overrides: dict | None = None) -> Run:
    """BOHB (Falkner et al. 2018): hpbandster's KDE config generator with its defaults, in
    Hyperband's brackets (eta 3, s_max 2), each a successive halving whose survivors are
    retrained at the next fidelity; the first START_UP configurations drawn while the model is
    still empty are crn_config's."""
    try:
        from hpbandster.optimizers.config_generators.bohb import BOHB as KDEGenerator
    except ImportError as err:
        raise MissingPackage("hpbandster (pip install -e .[bench])") from err
    import logging

    logging.getLogger("hpbandster").setLevel(logging.ERROR)
    np.random.seed(seed % 2**32)  # hpbandster draws from numpy's global generator
    cs = config_space(spec, seed)
    generator = KDEGenerator(configspace=cs)
    ledger = Ledger(spec)
    s_max = round(math.log(MAX_UNITS / (MAX_UNITS / ETA**2), ETA))
    k, drawn, iteration = 0, 0, 0
    with one_thread():
        while not ledger.exhausted:
            s = s_max - iteration % (s_max + 1)
            n = math.ceil((s_max + 1) / (s + 1) * ETA**s)
            budget = MAX_UNITS * ETA ** (-s)
            configs = []
            for _ in range(n):
                if not generator.kde_models and drawn < START_UP:
                    config = {key: crn_config(spec, seed, drawn)[key] for key in cs}
                    drawn += 1
                else:
                    config = dict(generator.get_config(budget)[0])
                configs.append(config)
            for _rung in range(s + 1):
                losses = []
                for config in configs:
                    if ledger.exhausted:
                        return ledger.run()
                    loss = evaluate(ledger, k, config, seed, spec, budget)
                    k += 1
                    generator.new_result(Job(config, budget, loss))
                    losses.append(loss)
                keep = max(1, len(configs) // ETA)
                order = sorted(range(len(configs)), key=lambda i: losses[i])
                configs = [configs[i] for i in order[:keep]]
                budget *= ETA
            iteration += 1
    return ledger.run()
