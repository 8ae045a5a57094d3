"""The answer in one paragraph: which batch size, how long, which LR and how to scale it, what to
expect, and where batch size stops paying in examples and in seconds.

The report opens with the short answer (`answer`: the settings, the value to expect, the one
caveat, the command to run next, a line each), then the reasoning (`reasoning`); the study note
and the end of a sweep print the same as one paragraph (`recommendation`). The expected metric
comes from the good trials of the recommended batch size (within the tolerance of its best): the
best of a sweep is an optimistic estimate of what its configuration gives. Confirmation runs
(`sweeps confirm`: the best configurations trained again with fresh seeds,
`StudyAnalysis.confirmed`) are the honest estimate. Once the search's best has some, the
paragraph follows them (`choose`): it recommends the configuration with the best confirmed mean,
expects that mean with the runs' spread, and says so when that is not the search's best.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial

from sweeps.confirmation.confirmed import Confirmed
from sweeps.results.analysis import StudyAnalysis, coupling_of
from sweeps.results.critical import WIDE_FACTOR, interval_text, tradeoff_sentence
from sweeps.results.noise import disagreement
from sweeps.trial.record import TrialRecord


@dataclass(frozen=True)
class Expected:
    """What the recommended configuration is expected to score."""

    mean: float
    sd: float | None  # None: a single value, no spread
    n: int
    source: str  # e.g. "good trials at B=32" or "confirmation runs"

    def text(self, metric: str) -> str:
        return f"expect {self.value_text(metric)}"

    def value_text(self, metric: str, short: bool = False) -> str:
        """`short`: without the advice to repeat a single value (the short answer's next command says how)."""
        if self.sd is None:
            single = self.source.replace("trials", "trial").replace("runs", "run")
            advice = "" if short else "; repeat it with other seeds to measure one"
            return f"{metric} about {self.mean:.4g} (a single {single}: no spread yet{advice})"
        return f"{metric} {self.mean:.4g} +/- {self.sd:.2g} (mean +/- sd of {self.n} {self.source})"


def expected_metric(values: list[float], source: str, confirmed: Expected | None = None) -> Expected:
    """Confirmation runs win when there are some; else the mean and spread of `values`."""
    if confirmed is not None:
        return confirmed
    sd = float(np.std(values, ddof=1)) if len(values) >= 2 else None
    return Expected(float(np.mean(values)), sd, len(values), source)


def seconds_to_target(a: StudyAnalysis) -> dict[int, float]:
    """Per batch size that reached the target between two evaluations (a first-evaluation crossing is
    only an upper bound): its examples to target / its measured examples per second."""
    if a.critical is None:
        return {}
    return {b: a.critical.reached[b].examples / a.throughput[b] for b in a.critical.fitted if a.throughput.get(b)}


def lr_advice(a: StudyAnalysis) -> str:
    fit = a.lr_fit
    if fit.slope is None:
        return "When you change batch size, retune the LR: too few batch sizes had good trials to fit how it scales."
    low, high = fit.interval  # type: ignore[misc]
    slope = f"fitted slope {fit.slope:.2f}, {100 * fit.confidence:.0f}% CI [{low:.2f}, {high:.2f}]"
    if fit.rule is not None:
        return f"When you change batch size, scale the LR with the {fit.rule} rule ({slope})."
    covered = fit.covered_rules
    why = f"covers {covered[0]}..{covered[-1]}" if covered else "lies outside every rule"
    return f"When you change batch size, retune the LR: the {slope} {why}."


def examples_advice(a: StudyAnalysis) -> str:
    """B_crit from steps to target when its interval is within `WIDE_FACTOR`, else from the noise
    scale when its range is; an estimate wider than that is said to be undetermined, not given."""
    critical, noise = a.critical, a.noise
    if critical is not None and critical.determined:
        interval = interval_text(critical.interval, critical.confidence)
        text = (f"Batch size stops paying in examples around B_crit ~ {critical.b_crit:.0f} {interval} from steps "
                "to target")
        if noise is not None:
            text += f" (noise scale: {noise.median:.0f})" if noise.determined else " (noise scale: undetermined)"
        warn = disagreement(critical.b_crit, noise)
        return f"{text}; {tradeoff_sentence()}." + (f" Note: {warn}." if warn else "")
    unsure = None
    if critical is not None and critical.value is not None:
        unsure = (f"the steps-to-target fit's {interval_text(critical.interval, critical.confidence)[1:-1]} "
                  f"({len(critical.fitted)} batch sizes reached the target)")
    if noise is not None and noise.determined:
        place = f"the steps-to-target fit is undetermined: {unsure}" if unsure else "steps to target could not place it"
        return (f"Batch size stops paying in examples around B_crit ~ {noise.median:.0f} from the gradient "
                f"noise scale alone (median {noise.statistic}; range [{noise.low:.0f}, {noise.high:.0f}]; "
                f"{place}): {tradeoff_sentence()}.")
    if noise is not None or unsure:
        steps = unsure or "steps to target could not place B_crit"
        noisy = f"; the gradient noise scale is no answer either ({noise.spread()}, more than {WIDE_FACTOR:g}x)" \
            if noise is not None else ""
        return f"Where batch size stops paying in examples is undetermined: {steps}{noisy}."
    if critical is not None and critical.s_min is not None:  # fitted, but B_crit lies outside the range
        return f"Where batch size stops paying in examples: {critical.reason(a.metric)}."
    reason = critical.reason(a.metric) if critical is not None else "no target"
    return f"Where batch size stops paying in examples is not known yet: {reason}."


def seconds_advice(a: StudyAnalysis) -> str:
    seconds = seconds_to_target(a)
    if not seconds:
        return ("No batch size that reached the target between two evaluations recorded its throughput, so "
                "where batch size stops paying in seconds is unknown.")
    fastest = min(seconds, key=seconds.get)
    took = (f"B={fastest} reached {a.metric} {a.target:.4g} fastest ({seconds[fastest]:.3g} s at "
            f"{a.throughput[fastest]:,.0f} examples/s, measured)")
    larger = [b for b in seconds if b > fastest]
    if larger:
        return (f"In seconds, batch size stops paying past B={fastest}: {took}; "
                f"B={', '.join(map(str, larger))} took longer.")
    if len(seconds) > 1:
        return (f"In seconds, batch size still paid at B={fastest}, the largest that reached the target: {took}; "
                f"larger batches may be faster still.")
    return f"In seconds: {took}; no other batch size reached the target to compare with."


@dataclass(frozen=True)
class Choice:
    """The configuration to recommend: the search's best, or the confirmed best once the search's
    best has confirmation runs."""

    trial: FrozenTrial
    confirmed: Confirmed | None = None  # its confirmation runs, when the paragraph follows them
    overtook: Confirmed | None = None  # the search's best, when the confirmed ranking put another first
    unconfirmed_best: bool = False  # other configurations have confirmation runs, the search's best none


CONFIRMED_SOURCE = "confirmation runs with fresh seeds"


def choose(a: StudyAnalysis) -> Choice:
    """Follow the confirmed ranking when the search's best was trained again: the configuration
    with the best confirmed mean (ties: the search's order). A search best that was never retrained
    (a newer best than the confirmed ones) is recommended as the search found it."""
    best = a.complete[0]
    by_number = {t.number: t for t in a.complete}
    retrained = {r.trial: r for r in a.confirmed if (r.values or r.diverged) and r.trial in by_number}
    rated = [r for r in retrained.values() if r.mean is not None]
    if not rated or best.number not in retrained:
        return Choice(best, unconfirmed_best=bool(rated))
    sign = -1 if a.maximize else 1
    top = min(rated, key=lambda r: (sign * r.mean, a.complete.index(by_number[r.trial])))
    return Choice(by_number[top.trial], top, retrained[best.number] if top.trial != best.number else None)


def confirmed_expected(runs: Confirmed) -> Expected:
    return Expected(runs.mean, runs.sd, len(runs.values), CONFIRMED_SOURCE)


def confirmation_text(choice: Choice, a: StudyAnalysis) -> str:
    """After the expected metric: what the confirmation runs add, or that there are none yet."""
    runs = choice.confirmed
    if runs is None:
        why = (f" (`sweeps confirm` has not retrained trial {choice.trial.number} yet)" if choice.unconfirmed_best
               else "")
        return f"; the best of {len(a.complete)} trials is optimistic until confirmation runs repeat it{why}"
    diverged = f"; {runs.diverged} more diverged (loss NaN/inf)" if runs.diverged else ""
    return f"{diverged}; its search-time value was {runs.search_value:.4g}"


def overtaken_text(choice: Choice, metric: str) -> str:
    """The sentence saying the confirmed ranking, not the search's, chose the configuration."""
    search = choice.overtook
    if search is None:
        return ""
    confirmed = (f"{search.mean:.4g} confirmed" if search.mean is not None
                 else "its confirmation runs diverged")
    return (f" The confirmation runs rank trial {choice.trial.number} first, ahead of the search's best, trial "
            f"{search.trial} ({metric} {search.search_value:.4g} in the search, {confirmed}), so this follows them.")


@dataclass(frozen=True)
class Settings:
    """What to train with and what to expect: the chosen configuration in words."""

    choice: Choice
    batch_size: int | None
    lr: str  # the effective peak LR
    how: str  # base LR and coupling
    length: str | None  # epochs (updates, examples)
    expected: Expected


def settings(a: StudyAnalysis) -> Settings:
    choice = choose(a)
    best = choice.trial
    record = TrialRecord.of(best)
    b = record.batch_size
    good = [t.value for t in a.complete if TrialRecord.of(t).batch_size == b
            and (1 if a.maximize else -1) * (best.value - t.value) <= a.tolerance]
    confirmed = None if choice.confirmed is None else confirmed_expected(choice.confirmed)
    expected = expected_metric(good, f"good trials at B={b}", confirmed)
    lr = "-" if record.lr is None else f"{record.lr:.4g}"
    base = best.params.get("base_lr")
    how = f"base LR {base:.4g}, coupling {coupling_of(best, record, '-')}" if base is not None else \
        f"coupling {coupling_of(best, record, '-')}"
    epochs = None if record.epochs_completed is None else f"{record.epochs_completed:.3g} epochs"
    counts = ", ".join(part for part in (
        None if record.updates is None else f"{record.updates:,} updates",
        None if record.examples_seen is None else f"{record.examples_seen:,} examples") if part)
    length = f"{epochs} ({counts})" if epochs and counts else (epochs or counts)
    return Settings(choice, b, lr, how, length, expected)


def caveat(a: StudyAnalysis, s: Settings) -> str:
    """The one caveat that matters most: diverged confirmation runs, then an unconfirmed (optimistic)
    value, then a value without spread, then how the LR moves with batch size."""
    runs = s.choice.confirmed
    if runs is not None and runs.diverged:
        return f"{runs.diverged} of its {runs.diverged + len(runs.values)} confirmation runs diverged (loss NaN/inf)"
    if runs is None:
        return confirmation_text(s.choice, a).removeprefix("; ")
    if s.expected.sd is None:
        return "a single confirmation run: no spread yet"
    fit = a.lr_fit
    if fit.rule is None:
        return "no coupling rule fits how the LR moved with batch size: retune the LR if you change batch size"
    return f"if you change batch size, scale the LR with the {fit.rule} rule"


def next_command(s: Settings, study: str) -> str:
    """Confirm the search's best with fresh seeds; once confirmed, export it to train it again.
    `study`: the study file and the store's arguments, as the command was given them."""
    if s.choice.confirmed is None:
        return f"sweeps confirm {study}"
    return f"sweeps best {study} --trial {s.choice.trial.number} --export best.yaml (then sweeps run best.yaml)"


def answer(a: StudyAnalysis, study: str) -> dict[str, str]:
    """The short answer the report opens with, one line each: the settings to train with, the
    value to expect and its spread, the caveat that matters, the command to run next (`study`:
    the study file and the store's arguments, as given)."""
    s = settings(a)
    train = f"batch size {s.batch_size}, peak LR {s.lr} ({s.how}; trial {s.choice.trial.number})"
    expect = s.expected.value_text(a.metric, short=True)
    if s.choice.confirmed is not None:  # and the search-time value it confirms
        expect += confirmation_text(s.choice, a)
    return {"train": train + (f", {s.length}" if s.length else ""), "expect": expect, "caveat": caveat(a, s),
            "next": next_command(s, study)}


def answer_lines(answer: dict[str, str]) -> list[str]:
    return [f"{key.title()}:".ljust(9) + text for key, text in answer.items()]


def reasoning(a: StudyAnalysis) -> str:
    """Why: whose ranking chose the configuration, how to move the LR with batch size, and where
    batch size stops paying in examples and in seconds."""
    parts = [overtaken_text(choose(a), a.metric).strip(), lr_advice(a), examples_advice(a)]
    if a.target is not None and math.isfinite(a.target):
        parts.append(seconds_advice(a))
    return " ".join(part for part in parts if part)


def recommendation(a: StudyAnalysis) -> str:
    """The one paragraph; `a` must have a complete trial."""
    s = settings(a)
    first = (f"Recommendation: train at batch size {s.batch_size}" + (f" for {s.length}" if s.length else "")
             + f" with peak LR {s.lr} ({s.how}; trial {s.choice.trial.number}); {s.expected.text(a.metric)}"
             + f"{confirmation_text(s.choice, a)}.")
    return f"{first} {reasoning(a)}"
