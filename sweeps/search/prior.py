"""A measured prior on the learning rate: an LR range test, once per study, centres the search.

`search.lr_range_test` turns it on (off by default). The test is Smith's (2017, "Cyclical
learning rates for training neural networks", section 3.3; fastai's `lr_find`): from the model's
initialisation, train with the LR rising geometrically at every update, from a tenth of the
searched range's low to ten times its high, and read off the LR at which the smoothed training
loss was least, `lr_min`. The test stops once the smoothed loss has grown past 4 times its least,
or is not finite. It is measured by `sweeps/trial/lr_range_test.py` (torch, imported only then).

It runs at three batch sizes: the smallest, the middle and the largest searched (or those of
`batch_sizes`, two at least). From them:

- **the coupling rule:** the exponent of lr_min(B) ~ B^e, fitted in log-log by least squares, is
  snapped to the nearest rule: none (0), sqrt (0.5) or linear (1). It replaces the study file's
  rules;
- **the centre:** the geometric mean of the tests' lr_min, each moved to the reference batch size
  by that rule, divided by `below`. The least-loss LR of a short test from initialisation is well
  above the best peak LR of a whole run; `below` is that ratio;
- **the base-LR range:** `span` wide (high / low), log-centred there, inside the study file's
  range: moved inward, never cut, where it reaches past one end.

The batch sizes searched are unchanged, unless `cap_batch` is set. Then each test also measures
the simple gradient noise scale B_simple (McCandlish et al. 2018; `objectives/training/noise_scale.py`):
every update's batch is split in two halves whose gradients' norms, with the whole batch's, give
unbiased estimates of tr(Sigma) and |G|^2, averaged over the updates up to the least-loss one (the
training the test did before its LR grew too large), at no extra pass. Past the critical batch
size B_crit ~ B_simple an update is worth less than its examples: reaching a loss takes about
E_min (1 + B / B_crit) examples. So the search keeps the batch sizes up to the smallest searched
one at or above B_simple (the geometric mean of the tests'), and drops those past it. B_simple
measured this early in training is an underestimate (it grows as the loss falls), so the cap
leans small; the prior line prints what was measured.

**Cost.** Every test trains the same number of updates: the largest count whose examples, over the
tested batch sizes, stay within `budget_fraction` of the study's `n_trials` full trials (a full
trial counted at the middle batch size), at most 200. A study whose share buys fewer than 10 is
refused (exit 2). The examples it trained are stored with the prior.

**Once per study.** The prior is measured when the study is first opened (before `--workers` start
their processes), stored on the study (`PRIOR_ATTR`), and read back by every later opener: workers,
resumes and `sweeps confirm`, so all trials search one space. The measurement uses the trials'
training step (precision, micro-batches), random batches drawn from the training data with the
study seed, and the study seed's initialisation; the global RNG is put back afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, Protocol

import optuna

from storage.optuna_private import study_storage
from sweeps.config.study_file import FloatRange, IntRange, SearchSection, SweepConfig
from sweeps.trial.record import CONFIRMS_STUDY_ATTR, PRIOR_ATTR

RULES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}  # the couplings the fitted exponent snaps to


@dataclass(frozen=True)
class MeasuredPrior:
    batch_sizes: tuple[int, ...]  # tested
    lr_min: tuple[float, ...]  # the LR of least smoothed loss at each
    updates: int  # per batch size
    examples: int  # trained by the tests: the prior's cost
    exponent: float  # fitted, before snapping
    coupling: str  # the rule it snapped to
    low: float  # the base-LR range searched
    high: float
    n_train: int = 0  # the training set's examples and tokens per example, for the prior's cost in any unit
    tokens_per_example: float | None = None
    seconds: float = dataclasses.field(default=0.0, compare=False)  # the tests' wall time (not what they measured)
    # `cap_batch`: B_simple measured in each test (None: not measurable), and the largest batch
    # size searched (None: no cap)
    noise_scales: tuple[float | None, ...] = ()
    batch_high: int | None = None

    def to_attrs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> MeasuredPrior:
        return cls(**{**attrs, "batch_sizes": tuple(attrs["batch_sizes"]), "lr_min": tuple(attrs["lr_min"]),
                      "noise_scales": tuple(attrs.get("noise_scales", ()))})

    def line(self, budget_examples: float | None = None) -> str:
        tests = ", ".join(f"{lr:.3g} at batch {b}" for b, lr in zip(self.batch_sizes, self.lr_min))
        share = f", {self.examples / budget_examples:.1%} of the budget" if budget_examples else ""
        capped = ""
        if self.noise_scales:
            scales = ", ".join("none" if s is None else f"{s:.3g}" for s in self.noise_scales)
            capped = (f"; gradient noise scale {scales}: batch sizes searched up to "
                      + ("the largest" if self.batch_high is None else str(self.batch_high)))
        return (f"LR range test ({self.updates} updates per batch size, {self.examples} examples{share}): "
                f"least loss at {tests}; coupling {self.coupling} (fitted exponent {self.exponent:.2f}); "
                f"base LR searched in [{self.low:.3g}, {self.high:.3g}]{capped}")


def searched(search: SearchSection) -> SearchSection:
    """What the sampler searches: the study file's space, or with a measured prior its base-LR
    range and coupling rule."""
    prior = search.measured
    if prior is None:
        return search
    batch = search.batch_size if prior.batch_high is None else capped(search.batch_size, prior.batch_high)
    return dataclasses.replace(search, base_lr=FloatRange(prior.low, prior.high, log=True), coupling=prior.coupling,
                               batch_size=batch)


def capped(spec: IntRange | list[int] | int, high: int) -> IntRange | list[int] | int:
    """The batch sizes of `spec` up to `high` (the smallest of them when none is)."""
    if isinstance(spec, IntRange):
        return dataclasses.replace(spec, high=max(spec.low, min(spec.high, high)))
    if isinstance(spec, list):
        return [b for b in spec if b <= high] or [min(spec)]
    return spec


def batch_cap(searched_sizes: list[int], noise_scales: list[float | None]) -> int | None:
    """The smallest searched batch size at or above the tests' noise scale (their geometric mean):
    past the critical batch size B_crit ~ B_simple an update buys less than its examples' worth
    (McCandlish et al. 2018: reaching a loss takes E_min (1 + B / B_crit) examples, twice the least
    at B_crit). None: no cap (no test measured one, or it lies past the largest searched)."""
    measured = [s for s in noise_scales if s is not None and s > 0 and math.isfinite(s)]
    if not measured:
        return None
    scale = math.exp(sum(math.log(s) for s in measured) / len(measured))
    above = [b for b in sorted(searched_sizes) if b >= scale]
    return above[0] if above and above[0] < max(searched_sizes) else None


def stored_prior(study: optuna.Study) -> MeasuredPrior | None:
    """The prior a study measured, if it has one."""
    stored = study.user_attrs.get(PRIOR_ATTR)
    return None if stored is None else MeasuredPrior.from_attrs(stored)


class PriorBooks(Protocol):
    """The study's ledger, for a prior measured now (sweeps/budget/prior_books.py)."""

    def check(self, planned: MeasuredPrior) -> None:
        """Before the tests: ConfigError when what is left of `study.total_budget` cannot hold them."""

    def book(self, prior: MeasuredPrior) -> None:
        """After them: their cost, booked once."""


def use_prior(study: optuna.Study, config: SweepConfig, n_trials: int, books: PriorBooks | None = None) -> None:
    """Give `config.search` the study's measured prior: the stored one (a `sweeps confirm`
    companion's is its main study's), the one it already holds, or one measured now, booked in
    `books` (the ledger of a study with a total budget) and stored."""
    if config.search.lr_range_test is None:
        return
    stored = stored_prior(study)
    main = study.user_attrs.get(CONFIRMS_STUDY_ATTR)
    if stored is None and main is not None:  # a companion searches nothing: its runs train the main study's
        stored = stored_prior(optuna.load_study(study_name=main, storage=study_storage(study)))
    if stored is not None:
        config.search.measured = stored
        return
    if config.search.measured is None:
        from sweeps.trial.lr_range_test import measure  # torch: only where a prior is measured

        prior, budget = measure(config, n_trials, None if books is None else books.check)
        if books is not None:
            books.book(prior)
        print(prior.line(budget), file=sys.stderr, flush=True)
        config.search.measured = prior
    study.set_user_attr(PRIOR_ATTR, config.search.measured.to_attrs())


def sizes_to_test(search: SearchSection) -> tuple[int, ...]:
    """`lr_range_test.batch_sizes`, or the smallest, middle and largest searched."""
    if search.lr_range_test is not None and search.lr_range_test.batch_sizes:
        return tuple(sorted(set(search.lr_range_test.batch_sizes)))
    sizes = sorted(set(search.batch_sizes()))
    return tuple(sorted({sizes[0], sizes[len(sizes) // 2], sizes[-1]}))


def fit(sizes: tuple[int, ...], lrs: list[float], reference: int) -> tuple[float, str, float]:
    """The fitted exponent of lr ~ B^e, the rule nearest it, and the LR at the reference batch
    size under that rule (the geometric mean of the tests moved there)."""
    xs, ys = [math.log(b) for b in sizes], [math.log(lr) for lr in lrs]
    if len(xs) > 1:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        exponent = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    else:
        exponent = 0.0
    rule = min(RULES, key=lambda name: abs(RULES[name] - exponent))
    e = RULES[rule]
    centre = math.exp(sum(y - e * (x - math.log(reference)) for x, y in zip(xs, ys)) / len(xs))
    return exponent, rule, centre


def placed(centre: float, span: float, low: float, high: float) -> tuple[float, float]:
    """[centre / sqrt(span), centre x sqrt(span)], moved inside [low, high] (the whole of it when
    it is narrower than `span`)."""
    if high / low <= span:
        return low, high
    lo, hi = centre / math.sqrt(span), centre * math.sqrt(span)
    if lo < low:
        return low, low * span
    if hi > high:
        return high / span, high
    return lo, hi
