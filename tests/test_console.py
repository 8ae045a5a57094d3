"""The `sweeps` console command, run from a folder outside the repository.

The console entry point is tested as the installed script runs it (`from sweeps.console import
main`), as `python -m sweeps.console` and as `python -m sweeps`; all from a folder whose own `storage.py` and
`objectives.py` would break the project's packages if they were imported. Those, the import-path
cases of each entry point (the installed script, `python -m sweeps.run`, `python -m sweeps.console`,
the children of --workers) and what a fresh interpreter imports are real subprocesses; what each
subcommand does is checked in this process (`console`: the same `main`, its exit code and output).
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import PG_URL, TINY, in_process, load_study, needs_pg

REPO = Path(__file__).resolve().parents[1]

SCRIPT = [sys.executable, "-c", "import sys; from sweeps.console import main; sys.exit(main())"]
MODULE = [sys.executable, "-m", "sweeps.console"]
PACKAGE = [sys.executable, "-m", "sweeps"]  # sweeps/__main__.py
SUBCOMMANDS = ["run", "report", "dashboard", "probe", "best", "confirm", "predict", "studies", "slurm", "screenshot"]
if (REPO / "sweeps" / "schema_cmd.py").is_file():
    SUBCOMMANDS.append("schema")


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "SWEEPS_STORAGE"}
    out["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    out["OMP_NUM_THREADS"] = "1"  # the same thread count in every run: values comparable to the last bit
    return {**out, **extra}


def sweeps(args: list[str], cwd: Path, form: list[str] = SCRIPT, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*form, *args], cwd=cwd, env=env(**extra), capture_output=True, text=True, timeout=300)


@pytest.fixture
def console(monkeypatch, capsys):
    """`sweeps ARGS` in this process: (args, cwd, **env) -> its exit code and output, as `sweeps` gives them
    in `cwd` with `env` added to the environment ($SWEEPS_STORAGE unset unless given)."""
    from sweeps.console import main

    monkeypatch.delenv("SWEEPS_STORAGE", raising=False)

    def run(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess:
        with monkeypatch.context() as m:
            m.chdir(cwd)
            for key, value in extra.items():
                m.setenv(key, value)
            return in_process(main, args, capsys)

    return run


@pytest.fixture
def isolated_imports(tmp_path, monkeypatch):
    """The import path as it was before the test (a run appends its task folders) and, after it, no module
    imported from the test's folder still loaded in this process."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def write_study(folder: Path, name: str = "tiny", n_trials: int = 2, **study: object) -> Path:
    data = copy.deepcopy(TINY)
    data["study"].update(name=name, n_trials=n_trials, **study)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def shadowed(tmp_path: Path) -> Path:
    """A working folder holding a user's own storage.py and objectives.py that fail on import."""
    for name in ("storage", "objectives"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    return tmp_path


def test_top_level_help_lists_every_subcommand(tmp_path):
    done = sweeps(["--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    for name in SUBCOMMANDS:
        assert f"    {name}" in done.stdout, f"{name} missing from `sweeps --help`:\n{done.stdout}"
    assert "example" in done.stdout


def test_no_subcommand_or_an_unknown_one_is_a_usage_error(tmp_path, console):
    assert console([], tmp_path).returncode == 2
    done = console(["nonsense"], tmp_path)
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_help_shows_an_example(name, tmp_path, console):
    done = console([name, "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"usage: sweeps {name} " in done.stdout, "the usage line names the command as users type it"
    assert "example" in done.stdout.lower(), done.stdout


def test_importing_the_dispatcher_does_not_import_torch_or_optuna(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import sys, sweeps.console; "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'optuna')))"],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("form", [SCRIPT, MODULE, PACKAGE], ids=["script", "python-m", "python-m-sweeps"])
def test_a_users_storage_and_objectives_modules_do_not_break_it(form, shadowed):
    study = write_study(shadowed)
    done = sweeps(["run", study.name, "--quiet"], shadowed, form)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best val_mse" in done.stdout
    assert "user's own" not in done.stderr
    done = sweeps(["studies", study.name], shadowed, form)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny " in done.stdout


def test_python_m_sweeps_run_in_such_a_folder_is_what_breaks(shadowed):
    """The case the console fixes: `python -m sweeps.run` imports the user's storage.py."""
    study = write_study(shadowed)
    done = subprocess.run([sys.executable, "-m", "sweeps.run", study.name, "--dry-run"], cwd=shadowed, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "user's own" in done.stderr


def test_run_and_report_dispatch_to_the_module_mains(tmp_path, console):
    study = write_study(tmp_path)
    done = console(["run", str(study), "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    assert len(loaded.trials) == 2
    out = tmp_path / "out"
    done = console(["report", str(study), "--out", str(out), "--top", "2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "study tiny: 2 complete" in done.stdout
    assert (out / "summary.json").is_file()
    done = console(["run", str(study), "--n-trials", "0"], tmp_path)  # the module's own checks answer
    assert done.returncode == 2
    assert "--n-trials must be >= 1" in done.stderr


def test_best_prints_and_its_export_reproduces_the_trial(tmp_path, console):
    study = write_study(tmp_path, n_trials=3, seed=5)
    assert console(["run", str(study), "--quiet"], tmp_path).returncode == 0
    done = console(["best", str(study), "--top", "2", "--export", "best.yaml"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "study tiny: best 2 of 3 finished trials (minimize val_mse)"
    header = lines[1].split()
    assert header == ["trial", "value", "batch_size", "epochs", "updates", "planned_updates", "lr", "coupling",
                      "base_lr", "warmup", "schedule", "seed"]
    assert len(lines) == 5 and lines[4].startswith("wrote best.yaml")

    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}").trials
    best = min(trials, key=lambda t: t.value)
    first = dict(zip(header, lines[2].split()))
    assert int(first["trial"]) == best.number
    assert int(first["batch_size"]) == best.user_attrs["batch_size"]
    assert int(first["seed"]) == best.user_attrs["seed"]

    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert exported["study"]["training_seed"] == best.user_attrs["seed"]
    assert exported["search"] == {"batch_size": best.user_attrs["batch_size"], "base_lr": best.user_attrs["lr"],
                                  "coupling": "none", "reference_batch_size": best.user_attrs["batch_size"],
                                  "warmup_fraction": 0.0}
    assert exported["sampler"] == {"name": "random"} and exported["pruner"] == {"name": "none"}
    assert exported["study"]["n_trials"] == 1

    done = console(["run", "best.yaml", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    again = optuna.load_study(study_name=f"tiny-trial{best.number}",
                              storage=f"sqlite:///{tmp_path / f'tiny-trial{best.number}.db'}").trials
    assert len(again) == 1
    assert again[0].user_attrs["seed"] == best.user_attrs["seed"]
    assert again[0].user_attrs["lr"] == best.user_attrs["lr"]
    assert abs(again[0].value - best.value) <= 1e-6, (again[0].value, best.value)


def test_best_export_of_a_horizon_trains_its_recorded_value(tmp_path, console):
    """With budget.horizons, `sweeps best --export FILE --horizon H` then `sweeps run FILE`: the
    dedicated run of the shorter horizon gives the value the horizon recorded, to the last bit."""
    data = copy.deepcopy(TINY)
    data["study"].update(n_trials=3, seed=5)
    data["budget"]["horizons"] = ["0.25x", 20]
    data["search"]["warmup_fraction"] = {"low": 0.05, "high": 0.3}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert console(["run", "tiny.yaml", "--quiet"], tmp_path).returncode == 0
    done = console(["best", "tiny.yaml", "--export", "h.yaml", "--horizon", "0.25x"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best per horizon (updates)" in done.stdout
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}").trials
    recorded = {t.number: t.user_attrs["horizons"][0] for t in trials}
    number = min(recorded, key=lambda n: (recorded[n]["value"], n))  # minimize val_mse
    assert recorded[number]["length"] == 10
    done = console(["run", "h.yaml", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    again = optuna.load_study(study_name=f"tiny-trial{number}-h10",
                              storage=f"sqlite:///{tmp_path / f'tiny-trial{number}-h10.db'}").trials
    assert again[0].value == recorded[number]["value"]
    assert again[0].user_attrs["updates"] == recorded[number]["updates"] == 10


def test_best_export_of_a_coupled_trial_keeps_its_effective_lr(tmp_path, console):
    """With linear coupling the exported base LR is the trial's coupled LR, not its sampled base LR;
    searched epochs are fixed at the trial's."""
    data = copy.deepcopy(TINY)
    data["study"].update(n_trials=2)
    data["search"].update(coupling="linear", batch_size=[64], reference_batch_size=16, epochs=[1, 2])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    assert console(["run", "tiny.yaml", "--quiet"], tmp_path).returncode == 0
    assert console(["best", "tiny.yaml", "--export", "b.yaml"], tmp_path).returncode == 0
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}").trials
    best = min(trials, key=lambda t: t.value)
    exported = yaml.safe_load((tmp_path / "b.yaml").read_text())
    assert best.user_attrs["lr"] == pytest.approx(4 * best.params["base_lr"])
    assert exported["search"]["base_lr"] == best.user_attrs["lr"]
    assert exported["search"]["coupling"] == "none"
    assert exported["search"]["epochs"] == best.params["epochs"]  # searched: fixed at the trial's



@pytest.mark.parametrize("task", ["csv", "beside_csv:factory"])
def test_best_export_to_another_folder_trains_on_the_same_data(tmp_path, task, console, isolated_imports):
    """The export's relative data path is rewritten for its own folder, so it reads the same file
    from anywhere; a task module found beside the study file is named, with how to reach it."""
    from objectives.tasks import samples

    interpreter_path = list(sys.path)
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    samples.write_csv(str(home / "data" / "t.csv"), rows=60)
    (home / "beside_csv.py").write_text("from objectives.tasks.csv_table import csv_table as factory\n")
    data = copy.deepcopy(TINY)
    data["study"].update(name="csv", n_trials=2, metric="val_accuracy", direction="maximize")
    data["objective"] = {"task": task, "options": {"path": "data/t.csv", "target": "species", "hidden": 4}}
    (home / "csv.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert console(["run", "csv.yaml", "--quiet"], home).returncode == 0
    done = console(["best", "csv.yaml", "--export", "../elsewhere/b.yaml"], home)
    assert done.returncode == 0, done.stderr[-3000:]
    exported = yaml.safe_load((elsewhere / "b.yaml").read_text())
    assert (elsewhere / exported["objective"]["options"]["path"]).resolve() == (home / "data" / "t.csv").resolve()
    if task != "csv":  # the module is beside the study file, not the export: the note says so and how
        assert "beside_csv" in done.stderr and f"PYTHONPATH={home}" in done.stderr, done.stderr
    else:
        assert done.stderr == ""
    # a fresh interpreter, as the note says to start it: PYTHONPATH=home for the user's module, nothing of the
    # earlier runs (their task folders on the path, their imported task module)
    sys.path[:] = ([str(home)] if task != "csv" else []) + interpreter_path
    sys.modules.pop("beside_csv", None)
    done = console(["run", str(elsewhere / "b.yaml"), "--quiet"], tmp_path)  # from a third folder
    assert done.returncode == 0, done.stderr[-3000:]
    best = max(optuna.load_study(study_name="csv", storage=f"sqlite:///{home / 'csv.db'}").trials,
               key=lambda t: t.value)
    again = optuna.load_study(study_name=f"csv-trial{best.number}",
                              storage=f"sqlite:///{elsewhere / f'csv-trial{best.number}.db'}").trials
    assert abs(again[0].value - best.value) <= 1e-6


def test_best_without_a_store(tmp_path, console):
    study = write_study(tmp_path)
    done = console(["best", str(study)], tmp_path)
    assert done.returncode == 3
    assert "no store at" in done.stderr


def test_training_seed_is_validated(tmp_path, console):
    study = write_study(tmp_path, training_seed=-1)
    done = console(["run", str(study), "--dry-run"], tmp_path)
    assert done.returncode == 2
    assert "study.training_seed" in done.stderr


def test_studies_lists_a_sqlite_store_and_creates_nothing(tmp_path, console):
    first = write_study(tmp_path, name="alpha", n_trials=2)
    second = write_study(tmp_path, name="beta", n_trials=1, storage="sqlite:///alpha.db")
    assert console(["run", str(first), "--quiet"], tmp_path).returncode == 0
    assert console(["run", str(second), "--quiet"], tmp_path).returncode == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    stamp = (tmp_path / "alpha.db").stat().st_mtime_ns
    done = console(["studies", str(first)], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"store: sqlite:///{tmp_path / 'alpha.db'}"
    assert lines[1].split() == ["study", "direction", "complete", "pruned", "failed", "running", "best", "last",
                                "activity"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"alpha", "beta"}
    assert rows["alpha"][1:6] == ["minimize", "2", "0", "0", "0"]
    assert rows["beta"][1:6] == ["minimize", "1", "0", "0", "0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no -wal, -shm or other file made
    assert (tmp_path / "alpha.db").stat().st_mtime_ns == stamp
    alpha = optuna.load_study(study_name="alpha", storage=f"sqlite:///{tmp_path / 'alpha.db'}")
    assert float(rows["alpha"][6]) == pytest.approx(alpha.best_value, rel=1e-5)
    latest = max(t.datetime_complete for t in alpha.trials).strftime("%Y-%m-%d %H:%M:%S")
    assert " ".join(rows["alpha"][7:]) == latest

    by_flag = console(["studies", "--storage", "sqlite:///alpha.db"], tmp_path)  # relative: the working folder
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_flag.stdout == done.stdout
    by_env = console(["studies"], tmp_path, SWEEPS_STORAGE=f"sqlite:///{tmp_path / 'alpha.db'}")
    assert by_env.stdout == done.stdout

    with_workers = sweeps(["studies", str(first), "--workers"], tmp_path)
    assert with_workers.stdout.startswith(done.stdout)  # the same table, then each study's workers
    alpha_workers = with_workers.stdout.split("workers of alpha: ")[1].splitlines()
    assert alpha_workers[0] == "1"
    assert alpha_workers[1].split() == ["worker", "host", "pid", "started", "finished", "failed", "last", "finished"]
    assert alpha_workers[2].split()[:2] == ["0", socket.gethostname()] and alpha_workers[2].split()[5:7] == ["2", "0"]


def test_studies_without_a_store_named_is_a_usage_error(tmp_path, console):
    done = console(["studies"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: no store named: pass a study file, --storage URL or set $SWEEPS_STORAGE"]


def test_studies_on_a_missing_sqlite_file_creates_nothing(tmp_path, console):
    done = console(["studies", "--storage", "sqlite:///missing.db"], tmp_path)
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [f"error: no store at {tmp_path / 'missing.db'}"]
    assert list(tmp_path.iterdir()) == []


def test_studies_on_a_file_that_is_not_a_store(tmp_path, console):
    (tmp_path / "junk.db").write_text("not a database")
    done = console(["studies", "--storage", "sqlite:///junk.db"], tmp_path)
    assert done.returncode == 3
    assert len(done.stderr.strip().splitlines()) == 1 and "cannot read storage" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.db"]


@needs_pg
def test_studies_lists_a_postgresql_store(tmp_path, console):
    name = f"console-{uuid.uuid4().hex[:8]}"
    study = write_study(tmp_path, name=name, n_trials=1)
    try:
        assert console(["run", str(study), "--storage", PG_URL, "--quiet"], tmp_path).returncode == 0
        done = console(["studies", "--storage", PG_URL], tmp_path)
        assert done.returncode == 0, done.stderr
        rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:]}
        assert rows[name][1:6] == ["minimize", "1", "0", "0", "0"]
        assert "password" not in done.stdout
        done = console(["studies", "--storage", PG_URL, "--format", "json"], tmp_path)  # the subprocess, as used
        assert done.returncode == 0, done.stderr
        [listed] = [s for s in json.loads(done.stdout)["studies"] if s["study"] == name]
        stored = load_study(name, PG_URL)
        assert (listed["complete"], listed["best"]) == (1, stored.best_value)
    finally:
        optuna.delete_study(study_name=name, storage=PG_URL)


class DeletesAfterListing:
    """A real store whose listing is followed by another connection deleting one of the listed studies:
    the race `sweeps studies` met in CI beside a test that cleaned up its study."""

    def __init__(self, storage, writer, name: str) -> None:
        self.storage, self.writer, self.name = storage, writer, name

    def get_all_studies(self):
        listed = self.storage.get_all_studies()
        optuna.delete_study(study_name=self.name, storage=self.writer)
        return listed

    def __getattr__(self, attribute):
        return getattr(self.storage, attribute)


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_studies_leaves_out_a_study_deleted_while_it_lists(store, tmp_path):
    from storage.sql import open_read_only, open_storage
    from sweeps.studies import read_studies

    url = f"sqlite:///{tmp_path / 'race.db'}" if store == "sqlite" else PG_URL
    writer = open_storage(url)  # open: a SQLite store's -wal file is there, so the reader sees the deletion
    tag = uuid.uuid4().hex[:8]
    names = [f"race-{tag}-{n}" for n in ("a", "b", "c")]
    for name in names:
        study = optuna.create_study(study_name=name, storage=writer)
        study.enqueue_trial({})
        study.optimize(lambda trial: 1.0, n_trials=1)
    reader = open_read_only(url)
    try:
        studies, states, found, workers = read_studies(DeletesAfterListing(reader, writer, names[1]), True)
        mine = [f["study"] for f in found if f["study"].startswith(f"race-{tag}")]
        assert mine == [names[0], names[2]]
        assert [s.study_name for s in studies] == [f["study"] for f in found]  # rows stay aligned with studies
        assert set(workers) == {s.study_name for s in studies} and set(states) == {s._study_id for s in studies}
    finally:
        reader.engine.dispose()
        for name in (names[0], names[2]):
            optuna.delete_study(study_name=name, storage=writer)
        writer.engine.dispose()


@pytest.mark.skipif(not (REPO / "sweeps" / "config" / "overrides.py").is_file(), reason="no --set in this tree")
def test_best_reads_the_config_the_study_ran_with(tmp_path, console):
    """A study run with --set stored its config: the export keeps the overridden warmup, not the file's 0."""
    study = write_study(tmp_path, n_trials=1)
    done = console(["run", str(study), "--quiet", "--set", "search.warmup_fraction=0.2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    done = console(["best", str(study), "--export", "b.yaml"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "b.yaml").read_text())["search"]["warmup_fraction"] == 0.2
    assert dict(zip(done.stdout.splitlines()[1].split(), done.stdout.splitlines()[2].split()))["warmup"] == "0.2"


# --- where a task module is found: the working directory, then the study file's folder ---

INSTALLED = Path(sys.executable).with_name("sweeps")  # the console script pip installed beside the interpreter
FORMS = {"installed": [str(INSTALLED)], "python-m-run": [sys.executable, "-m", "sweeps.run"],
         "python-m-console": MODULE}
TASK_MODULE = ("import sys\nfrom objectives.tasks.regression import regression\n"
               "print('task module {}', file=sys.stderr)\n")


def entry(form: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    if form == "installed" and not INSTALLED.is_file():
        pytest.skip("the package is not pip-installed (no console script beside the interpreter)")
    command = [*FORMS[form], *(args if form == "python-m-run" else ["run", *args])]
    return subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)


def task_study(folder: Path, task: str, **study: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = write_study(folder, **study)
    data = yaml.safe_load(path.read_text())
    data["objective"]["task"] = task
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("form", list(FORMS))
def test_the_repository_example_task_imports_from_the_repository_root(form):
    """The custom-task example of the user guide (docs/guide/your_own_task.md runs it from the repository
    root) in every form. (The tests' PYTHONPATH holds the repository, so this one passed before the
    search order too; the next test is the one that did not.)"""
    assert "python -m sweeps.run examples/custom_task.yaml" in (REPO / "docs/guide/your_own_task.md").read_text()
    done = entry(form, ["examples/custom_task.yaml", "--dry-run"], REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "store:" in done.stdout


@pytest.mark.parametrize("form", list(FORMS))
def test_a_task_module_in_the_working_directory_or_beside_the_study(form, tmp_path):
    """One run per form: the study in sub/ names task_mod, which both folders hold; the working
    directory's wins, and it imports `beside`, which only the study file's folder holds."""
    (tmp_path / "task_mod.py").write_text("import beside\n" + TASK_MODULE.format("of the working directory"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "beside.py").write_text(TASK_MODULE.format("beside the study"))
    (tmp_path / "sub" / "task_mod.py").write_text(TASK_MODULE.format("in the study's folder, imported first"))
    done = entry(form, [str(task_study(tmp_path / "sub", "task_mod:regression").relative_to(tmp_path)),
                        "--dry-run"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "task module of the working directory" in done.stderr  # the working directory comes first
    assert "imported first" not in done.stderr
    assert "task module beside the study" in done.stderr  # then the study file's folder


def test_workers_children_find_the_working_directorys_task_module(tmp_path, run_here, isolated_imports):
    """The children of --workers (`python -m sweeps.console`, in the parent's working directory); the
    parent runs in this process, its children are real processes."""
    (tmp_path / "task_mod.py").write_text(TASK_MODULE.format("of the working directory"))
    study = task_study(tmp_path / "sub", "task_mod:regression", n_trials=2)
    done = run_here([str(study.relative_to(tmp_path)), "--workers", "2", "--quiet"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 trials finished" in done.stdout
    assert done.stderr.count("task module of the working directory") == 3, done.stderr  # the parent, 2 children


def test_a_missing_task_module_names_the_folders_searched(tmp_path, console):
    study = task_study(tmp_path / "sub", "nowhere:factory")
    done = console(["run", "sub/tiny.yaml", "--dry-run"], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"the working directory {tmp_path}, then the study file's folder {study.parent}" in done.stderr


def test_the_search_order_appends_what_the_path_lacks(tmp_path, monkeypatch):
    from objectives.registry import add_task_folders, task_folders
    monkeypatch.chdir(tmp_path)
    assert task_folders("sub") == [str(tmp_path), str(tmp_path / "sub")]
    assert task_folders(".") == [str(tmp_path)]
    path = ["/usr/lib/python3", ""]  # `python -c`: '' is the working directory, already on the path
    add_task_folders(path, task_folders("sub"))
    assert path == ["/usr/lib/python3", "", str(tmp_path / "sub")]
    path = ["/usr/bin"]  # the installed script: its own folder first, the working directory nowhere
    add_task_folders(path, task_folders("sub"))
    assert path == ["/usr/bin", str(tmp_path), str(tmp_path / "sub")]
