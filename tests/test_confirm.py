"""`sweeps confirm`: the best trials trained again with fresh seeds in a linked companion study,
on real stores (SQLite, and PostgreSQL with two worker processes) with real training; the runs
count against the main study's total budget."""

from __future__ import annotations

import html
import json
import statistics
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState

from storage import ledger
from storage.dashboard_formats import note_str_key_prefix
from sweeps import confirm, exits, report, run, studies
from sweeps.best import ranked
from sweeps.budget.spending import Spending
from sweeps.config.plan import budget_of
from sweeps.config.study_file import load_config
from sweeps.config.target import target_of
from sweeps.confirmation.companion import companion_config, companion_target, link, planned, queue_missing, why_not_run
from sweeps.confirmation.confirmed import Confirmed, confirmed_of, ranking_note, report_lines
from sweeps.loop.bookkeeping import Books
from sweeps.loop.runner import open_study, run_sweep
from sweeps.results.analysis import analyse
from sweeps.results.recommendation import answer, answer_lines, recommendation
from sweeps.text import number
from sweeps.trial.record import CONFIRM_STUDY_ATTR, CONFIRMS_STUDY_ATTR, TrialRecord, confirm_attrs
from tests.conftest import PG_URL, TINY, merged, needs_pg

REPO = Path(__file__).resolve().parents[1]


def searched(folder: Path, name: str = "tiny", storage: str | None = None, n_trials: int = 3) -> tuple[Path, str]:
    """A study file and its finished search of `n_trials` tiny trials; returns the file and its store URL."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(merged(TINY, {"study": {"name": name, "n_trials": n_trials}})))
    config = load_config(path)
    target = target_of(config, storage)
    run_sweep(config, target, show_progress=False)
    return path, target.storage_url


def table_rows(out: str) -> dict[str, list[str]]:
    """The confirm table's rows by trial number, as printed."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["trial", "search"])
    rows = [line.split() for line in lines[start + 1:] if line.split() and line.split()[0].isdigit()]
    return {row[0]: row for row in rows}


def by_source(companion: optuna.Study) -> dict[int, list[optuna.trial.FrozenTrial]]:
    runs: dict[int, list] = {}
    for t in companion.get_trials(states=(TrialState.COMPLETE,)):
        runs.setdefault(TrialRecord.of(t).confirms_trial, []).append(t)
    return runs


def test_confirm_retrains_the_best_with_fresh_seeds_in_a_linked_companion_and_resumes(tmp_path, capsys):
    path, url = searched(tmp_path)
    assert confirm.main([str(path), "--top", "2", "--seeds", "2", "--quiet"]) == exits.OK
    out = capsys.readouterr().out
    main = optuna.load_study(study_name="tiny", storage=url)
    companion = optuna.load_study(study_name="tiny-confirm", storage=url)
    assert main.user_attrs[CONFIRM_STUDY_ATTR] == "tiny-confirm"
    assert companion.user_attrs[CONFIRMS_STUDY_ATTR] == "tiny"
    assert len(companion.trials) == 4 and all(t.state == TrialState.COMPLETE for t in companion.trials)

    best = ranked(main.trials, maximize=False)[:2]
    runs = by_source(companion)
    assert set(runs) == {t.number for t in best}
    search_seeds = {TrialRecord.of(t).seed for t in main.trials}
    rows = table_rows(out)
    for source in best:
        records = [TrialRecord.of(t) for t in runs[source.number]]
        assert all(t.params == source.params for t in runs[source.number])  # the same configuration
        seeds = [r.seed for r in records]
        assert seeds == [r.confirm_seed for r in records]  # trained with the seed it was queued with
        assert len(set(seeds)) == 2 and not set(seeds) & search_seeds  # fresh
        values = [t.value for t in runs[source.number]]
        mean = statistics.fmean(values)
        assert rows[str(source.number)] == [str(source.number), number(source.value), number(mean),
                                            number(statistics.stdev(values)), "2", number(mean - source.value)]
    assert "ranking: the confirmed means rank the trials" in out
    report = report_lines(main)  # `sweeps report`: the same values beside the search's
    assert report[0].startswith("confirmed with fresh seeds (4 runs in study tiny-confirm)")
    assert table_rows("\n".join(report)) == rows

    # a rerun redoes nothing and prints the same table; more seeds train only the new ones
    assert confirm.main([str(path), "--top", "2", "--seeds", "2", "--quiet"]) == exits.OK
    assert capsys.readouterr().out == out
    assert len(optuna.load_study(study_name="tiny-confirm", storage=url).trials) == 4
    before = {t.number: t.value for t in companion.trials}
    assert confirm.main([str(path), "--top", "2", "--seeds", "3", "--quiet"]) == exits.OK
    companion = optuna.load_study(study_name="tiny-confirm", storage=url)
    assert len(companion.get_trials(states=(TrialState.COMPLETE,))) == 6 and len(companion.trials) == 6
    assert {t.number: t.value for t in companion.trials if t.number in before} == before

    # the companion is an ordinary study of the store: listed beside the search (and by the dashboard)
    assert studies.main(["--storage", url]) == exits.OK
    assert "tiny-confirm" in capsys.readouterr().out


def test_a_companion_trains_only_its_queue_and_a_retry_keeps_its_seed(tmp_path):
    """The bookkeeper hands out the queued run with its seed; an interrupted run is queued again
    with what it was queued with; an empty queue ends the sweep instead of sampling a new point;
    a run that failed for good is queued again by the next `sweeps confirm`."""
    path, url = searched(tmp_path, n_trials=2)
    config = load_config(path)
    main = optuna.load_study(study_name="tiny", storage=url)
    plan = planned(ranked(main.trials, maximize=False)[:1], seeds=1, study_seed=config.study.seed)
    companion_cfg = companion_config(config, "tiny", 1)
    companion = open_study(companion_cfg, companion_target(target_of(config), 1), n_train=256)
    link(main, companion)
    assert queue_missing(companion, plan) == plan and queue_missing(companion, plan) == []

    books = Books(companion, companion_cfg, n_trials=1)
    ref, point = books.ask()
    assert ref.fixed_seed == plan[0].seed and ref.params == plan[0].params
    books.close_unfinished(ref.trial_id, "interrupted: KeyboardInterrupt")
    retry, _ = books.ask()
    assert (retry.fixed_seed, retry.retry_of, retry.params) == (plan[0].seed, ref.number, plan[0].params)
    books.close_unfinished(retry.trial_id, "interrupted", requeue=False)
    assert books.ask() is None
    assert len(companion.trials) == 2  # no sampled trial

    # out of retries: the next `sweeps confirm` queues the run again, with the same seed
    assert confirm.main([str(path), "--top", "1", "--seeds", "1", "--quiet"]) == exits.OK
    done = optuna.load_study(study_name="tiny-confirm", storage=url).get_trials(states=(TrialState.COMPLETE,))
    assert [(TrialRecord.of(t).seed, t.params) for t in done] == [(plan[0].seed, plan[0].params)]


def test_why_not_run_refuses_unqueued_points_and_a_run_another_trial_holds():
    queued = confirm_attrs(3, 111)
    assert "queued" in why_not_run(5, {}, [])
    assert why_not_run(5, queued, [_frozen(4, TrialState.FAIL, queued)]) is None  # a failed run is run again
    assert "trial 2" in why_not_run(5, queued, [_frozen(2, TrialState.COMPLETE, queued)])
    assert "trial 4" in why_not_run(5, queued, [_frozen(4, TrialState.RUNNING, queued)])
    assert why_not_run(5, queued, [_frozen(6, TrialState.RUNNING, queued)]) is None  # the lower number runs
    assert why_not_run(5, queued, [_frozen(2, TrialState.COMPLETE, confirm_attrs(3, 222))]) is None


def _frozen(number: int, state: TrialState, attrs: dict) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                                      user_attrs=attrs)
    trial.number = number
    return trial


def test_the_ranking_note_says_when_the_confirmed_means_reorder_the_search():
    a, b = Confirmed(1, 0.90, True, [0.85, 0.86]), Confirmed(2, 0.89, True, [0.88, 0.87])
    assert "differently from the search (best first: 2, 1; the search: 1, 2)" in ranking_note([a, b])
    assert a.overstated == pytest.approx(0.045) and a.sd == pytest.approx(0.00707, rel=1e-3)
    a.values = [0.89, 0.90]
    assert "as the search did (best first: 1, 2)" in ranking_note([a, b])
    b.values = [0.895, 0.895]
    assert ranking_note([a, b]).endswith("(best first: 1, 2; trials 1 and 2 tie)")
    low = Confirmed(1, 0.30, False, [0.35])
    assert low.overstated == pytest.approx(0.05) and low.sd is None  # minimizing: positive is optimistic too


@pytest.mark.parametrize("args, code, message", [
    (["--top", "0"], exits.USAGE, "--top must be >= 1 (got 0)"),
    (["--seeds", "0"], exits.USAGE, "--seeds must be >= 1 (got 0)"),
    (["--workers", "0"], exits.USAGE, "--workers must be >= 1 (got 0)"),
    (["--study-name", "nope"], exits.NO_STUDY, "no study 'nope' in"),
    (["--storage", "sqlite:///{tmp}/missing.db"], exits.STORAGE, "no store at"),
])
def test_bad_arguments_exit_with_their_code_and_one_line(args, code, message, tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    store = f"sqlite:///{tmp_path}/tiny.db"
    path.write_text(yaml.safe_dump(merged(TINY, {"study": {"storage": store}})))  # found whatever the name
    optuna.create_study(study_name="tiny", storage=store)
    assert confirm.main([str(path), *[a.format(tmp=tmp_path) for a in args]]) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_study_with_no_complete_trial_has_nothing_to_confirm(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/tiny.db")
    assert confirm.main([str(path)]) == exits.FAILED
    assert "no complete trial with a value to confirm" in capsys.readouterr().err


@needs_pg
def test_two_workers_confirm_on_postgres(tmp_path, monkeypatch, capsys):
    """The parent here, its two worker processes pulling the queue of the companion on PostgreSQL."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the workers import this checkout
    name = f"confirm-{uuid.uuid4().hex[:8]}"
    try:
        path, url = searched(tmp_path, name, storage=PG_URL)
        capsys.readouterr()
        assert confirm.main([str(path), "--top", "2", "--seeds", "2", "--workers", "2", "--quiet",
                             "--storage", PG_URL]) == exits.OK
        companion = optuna.load_study(study_name=f"{name}-confirm", storage=PG_URL)
        assert optuna.load_study(study_name=name, storage=PG_URL).user_attrs[CONFIRM_STUDY_ATTR] == companion.study_name
        runs = by_source(companion)
        keys = [(TrialRecord.of(t).confirms_trial, TrialRecord.of(t).confirm_seed) for ts in runs.values() for t in ts]
        assert len(keys) == 4 and len(set(keys)) == 4 and len(runs) == 2
        assert not companion.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
        ran_and_failed = [t.number for t in companion.get_trials(states=(TrialState.FAIL,))
                          if not TrialRecord.of(t).error.startswith("not started")]  # only a race's surplus ask
        assert not ran_and_failed
        assert set(table_rows(capsys.readouterr().out)) == {str(n) for n in runs}
    finally:
        for study_name in (name, f"{name}-confirm"):
            try:
                optuna.delete_study(study_name=study_name, storage=PG_URL)
            except KeyError:
                pass


# --- the total budget: confirmation runs count against the main study's ledger --------------------

PER_RUN = 512  # examples: each trial and each confirmation run of `budgeted` trains exactly this many
BUDGETED = {"budget": {"unit": "examples", "per_trial": PER_RUN, "eval_every": 256}}


def budgeted(folder: Path, amount: float, name: str = "tiny", storage: str | None = None) -> tuple[Path, str]:
    """A study file with `study.total_budget` in examples and its finished search of 3 trials (1536 examples)."""
    path = folder / f"{name}.yaml"
    data = merged(merged(TINY, BUDGETED), {"study": {"name": name, "n_trials": 3,
                                                     "total_budget": {"amount": amount, "unit": "examples"}}})
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    target = target_of(config, storage)
    run_sweep(config, target, show_progress=False)
    return path, target.storage_url


def set_amount(path: Path, amount: float) -> None:
    data = yaml.safe_load(path.read_text())
    data["study"]["total_budget"]["amount"] = amount
    path.write_text(yaml.safe_dump(data))


def ledger_rows(url: str, study_id: int) -> dict[int, tuple[float, float | None]]:
    """trial id -> (reserved, spent) booked against the study's total budget."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.select(ledger.LEDGER).where(ledger.LEDGER.c.study_id == study_id))
            return {r.trial_id: (r.reserved, r.spent) for r in rows}
    finally:
        engine.dispose()


def ledger_state(url: str, study_id: int) -> ledger.LedgerState | None:
    engine = sqlalchemy.create_engine(url)
    try:
        return ledger.read(engine, study_id)
    finally:
        engine.dispose()


def check_confirmations_are_booked_in_the_main_ledger(path: Path, url: str, name: str, capsys) -> None:
    """Room for one confirmation run: it trains and books in the main study's ledger, the rest is not
    started and the note says so; raising the amount (`--set`) lets the rest run."""
    capsys.readouterr()
    assert confirm.main([str(path), "--top", "2", "--seeds", "2", "--quiet", "--storage", url]) == exits.OK
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == (
        "note: total budget: 3 of 4 confirmation runs not started (100 of 2,148 examples left, the next run "
        "needs 512); raise study.total_budget.amount to continue")
    main = optuna.load_study(study_name=name, storage=url)
    companion = optuna.load_study(study_name=f"{name}-confirm", storage=url)
    best = ranked(main.trials, maximize=False)[0]
    assert [(t.state, TrialRecord.of(t).confirms_trial) for t in companion.trials] == [(TrialState.COMPLETE,
                                                                                         best.number)]
    rows = ledger_rows(url, main._study_id)
    run_id = companion.trials[0]._trial_id
    assert set(rows) == {t._trial_id for t in main.trials} | {run_id}  # booked in the main study's ledger
    assert rows[run_id] == (PER_RUN, PER_RUN)  # reserved, then settled to what it trained
    state = ledger_state(url, main._study_id)
    assert (state.spent, state.open, state.stopped) == (4 * PER_RUN, 0, False)
    assert ledger_state(url, companion._study_id) is None  # a companion keeps no ledger of its own

    # every figure of the main study's ledger includes the run: `sweeps studies` and the study note
    assert studies.main(["--storage", url]) == exits.OK
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "2.05k/2.15k examples" in listed[name] and "2.05k/" not in listed[f"{name}-confirm"]
    assert "**Total budget**: 2.05k of 2.15k examples spent (95.3%), 100 left" in study_note_of(main)

    # raised on the command line, as with `sweeps run --set`: the three other runs fit
    raised = f"study.total_budget.amount={4 * PER_RUN + 3 * PER_RUN}"
    assert confirm.main([str(path), "--top", "2", "--seeds", "2", "--quiet", "--storage", url, "--set", raised]) == 0
    assert "not started" not in capsys.readouterr().out
    companion = optuna.load_study(study_name=f"{name}-confirm", storage=url)
    assert [t.state for t in companion.trials] == [TrialState.COMPLETE] * 4
    state = ledger_state(url, main._study_id)
    assert (state.spent, state.amount) == (7 * PER_RUN, 7 * PER_RUN)


def study_note_of(study: optuna.Study) -> str:
    storage = study._storage
    system = storage.get_study_system_attrs(study._study_id)
    prefix = note_str_key_prefix(None)
    return "".join(system[f"{prefix}{i}"] for i in range(sum(1 for key in system if key.startswith(prefix))))


def test_confirmation_runs_count_against_the_main_studys_total_budget(tmp_path, capsys):
    path, url = budgeted(tmp_path, amount=3 * PER_RUN + PER_RUN + 100)
    check_confirmations_are_booked_in_the_main_ledger(path, url, "tiny", capsys)


@pytest.mark.parametrize("lowered_to, why", [
    (3 * PER_RUN + 100, "100 of 1,636 examples left, the next run needs 512"),  # lowered in the study file
    (PER_RUN, "nothing left of 512 examples, the next run needs 512"),  # lowered below what was spent
    (None, "the sweep found it spent with 100 of 1,636 examples left"),  # the search stopped at it
])
def test_no_confirmation_run_starts_when_none_fits_what_is_left(tmp_path, capsys, lowered_to, why):
    path, url = budgeted(tmp_path, 3 * PER_RUN + 100 if lowered_to is None else 10 * PER_RUN)
    if lowered_to is not None:
        set_amount(path, lowered_to)
    capsys.readouterr()
    assert confirm.main([str(path), "--top", "1", "--seeds", "2", "--quiet"]) == exits.FAILED
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"error: total budget: 2 of 2 confirmation runs not started ({why}); raise "
                            "study.total_budget.amount to continue\n")
    with pytest.raises(KeyError):  # nothing was queued: no companion either
        optuna.load_study(study_name="tiny-confirm", storage=url)


def test_a_run_that_no_longer_fits_when_it_starts_is_closed_unstarted_and_the_search_may_go_on(tmp_path):
    """The reservation each run makes as it starts is the guard when the budget shrank since it was
    queued (another worker, a lowered amount): the run is closed unstarted, and the main study's
    ledger is not marked spent, since the search's own trials may still fit."""
    path, url = budgeted(tmp_path, amount=10 * PER_RUN)
    config = load_config(path)
    main = optuna.load_study(study_name="tiny", storage=url)
    engine = sqlalchemy.create_engine(url)
    state = ledger.read(engine, main._study_id)
    companion_cfg = companion_config(config, "tiny", 1, state)
    companion = open_study(companion_cfg, companion_target(target_of(config), 1), n_train=256)
    link(main, companion)
    queue_missing(companion, planned(ranked(main.trials, maximize=False)[:1], seeds=1, study_seed=0))
    books = Books(companion, companion_cfg, n_trials=1,
                  spending=Spending.of(companion_cfg, budget_of(companion_cfg), 256))
    ref, point = books.ask()
    ledger.set_total(engine, main._study_id, "tiny", state.spent + PER_RUN - 1, "examples")  # lowered meanwhile
    assert books.reserve(ref.trial_id, point) is False
    closed = optuna.load_study(study_name="tiny-confirm", storage=url).trials[0]
    assert closed.state == TrialState.FAIL and TrialRecord.of(closed).error.startswith(
        "not started: the total budget has 511 examples left, the trial needs 512")
    after = ledger.read(engine, main._study_id)
    assert ref.trial_id not in ledger_rows(url, main._study_id) and not after.stopped and after.left == PER_RUN - 1
    engine.dispose()


@needs_pg
def test_confirmation_runs_count_against_the_total_budget_on_postgres(tmp_path, capsys):
    name = f"confirm-budget-{uuid.uuid4().hex[:8]}"
    try:
        path, url = budgeted(tmp_path, 3 * PER_RUN + PER_RUN + 100, name=name, storage=PG_URL)
        check_confirmations_are_booked_in_the_main_ledger(path, url, name, capsys)
    finally:
        engine = sqlalchemy.create_engine(PG_URL)
        for study_name in (name, f"{name}-confirm"):
            try:
                study_id = optuna.load_study(study_name=study_name, storage=PG_URL)._study_id
            except KeyError:
                continue
            with engine.begin() as connection:
                for table in (ledger.LEDGER, ledger.BUDGETS):
                    connection.execute(sqlalchemy.delete(table).where(table.c.study_id == study_id))
            optuna.delete_study(study_name=study_name, storage=PG_URL)
        engine.dispose()


def test_the_report_the_study_note_and_the_end_of_a_sweep_give_the_confirmed_recommendation(tmp_path, capsys):
    """A real search and a real `sweeps confirm`: the one paragraph follows the confirmed values
    everywhere it appears."""
    path, url = searched(tmp_path)
    assert confirm.main([str(path), "--top", "2", "--seeds", "2", "--quiet"]) == exits.OK
    main = optuna.load_study(study_name="tiny", storage=url)
    runs = confirmed_of(main)
    top = min(runs, key=lambda r: r.mean)  # minimizing val_mse
    paragraph = recommendation(analyse(main, with_importances=False))
    assert (f"; trial {top.trial}); expect val_mse {top.mean:.4g} +/- {top.sd:.2g} (mean +/- sd of 2 confirmation "
            "runs with fresh seeds)") in paragraph and "optimistic" not in paragraph
    assert ("ahead of the search's best" in paragraph) == (top.trial != ranked(main.trials, maximize=False)[0].number)

    def flat(text: str) -> str:
        return " ".join(text.split())

    assert f"### Recommendation\n\n{paragraph}\n\n" in study_note_of(main)  # rewritten by `sweeps confirm`
    capsys.readouterr()
    assert report.main([str(path), "--out", str(tmp_path / "report")]) == exits.OK
    short = answer(analyse(main, with_importances=False), str(path))
    assert short["next"] == f"sweeps best {path} --trial {top.trial} --export best.yaml (then sweeps run best.yaml)"
    assert capsys.readouterr().out.startswith("\n".join(answer_lines(short)) + "\n\nWhy: ")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["recommendation"] == paragraph and summary["answer"] == short
    assert {r["trial"]: r["confirmed_mean"] for r in summary["confirmed"]} == {r.trial: r.mean for r in runs}
    assert html.escape(short["expect"]) in (tmp_path / "report" / "report.html").read_text()
    assert run.main([str(path), "--quiet"]) == exits.OK  # complete already: the end of a sweep, summary only
    assert paragraph in flat(capsys.readouterr().out)
