"""`sweeps COMMAND ...`: one command for every tool, each subcommand handing its arguments to the
module's own `main` (`sweeps run` is `python -m sweeps.run`, and so on).

The project's top-level packages are named `storage`, `objectives` and `sweeps`, so a user's own
`storage.py` or `objectives.py` in the working directory would shadow them whenever the working
directory comes first on the import path (`python -m`, `python -c`). Before anything of the
project is imported, this module moves that entry to the end of the path, unless it is the
project's own root: the project's packages win, and a task module in the working directory
(`objective.task: mytask:factory`) can still be imported.

Nothing here imports torch or Optuna: each subcommand's module is imported only when it runs.
"""

from __future__ import annotations

import os
import sys


def _demote_working_directory(path: list[str], root: str, cwd: str) -> None:
    """Move path[0] to the end when it stands for the working directory ('' or its path) and the
    working directory is not the project's root (where the packages themselves live)."""
    if not path:
        return
    first = path[0]
    try:
        is_cwd = first == "" or os.path.realpath(first) == os.path.realpath(cwd)
    except OSError:
        return
    if is_cwd and os.path.realpath(cwd) != os.path.realpath(root):
        path.append(path.pop(0))


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    _demote_working_directory(sys.path, _ROOT, os.getcwd())
except OSError:  # a working directory that no longer exists
    pass

import argparse  # noqa: E402  (after the import path is fixed)
import importlib  # noqa: E402

# name: (module whose `main(argv)` runs it, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("sweeps.run", "validate, then run (or resume) the sweep"),
    "report": ("sweeps.report", "tables, report.html and PNG figures of what the sweep found"),
    "dashboard": ("sweeps.dashboard", "optuna-dashboard on the study's store"),
    "probe": ("sweeps.probe", "the largest micro-batch that fits the device, stored on the study"),
    "best": ("sweeps.best", "the best trials' effective settings; --export a study file that retrains one"),
    "confirm": ("sweeps.confirm", "train the best trials again with fresh seeds; how far the search overstated them"),
    "predict": ("sweeps.predict", "batch size, LR and length for a larger budget, from the horizons; --verify"),
    "studies": ("sweeps.studies", "the studies in a store: trials, best value, last activity"),
    "slurm": ("sweeps.slurm", "the study's workers as a Slurm job array on a shared store (sbatch)"),
    "schema": ("sweeps.schema_cmd", "the study file's JSON schema"),
    "screenshot": ("sweeps.screenshot", "a PNG of the dashboard (needs a browser)"),
}

EPILOG = """examples:
  sweeps run study.yaml --dry-run
  sweeps report study.yaml --top 5
  sweeps best study.yaml --export best.yaml
  sweeps studies --storage sqlite:///tiny.db

`sweeps COMMAND --help` shows each command's options and an example.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweeps", description="Hyperparameter sweeps over batch size, epochs and "
                                "learning-rate coupling under a fixed compute budget.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        parser().print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        parser().parse_args([name])  # argparse's own "invalid choice" message, exit 2
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        print(f"error: `sweeps {name}` is not available in this installation ({module_name} is missing)",
              file=sys.stderr)
        return 2
    code = module.main(rest)
    exit_now = getattr(module, "exit_at_once_if_stopped", None)  # run, confirm: a worker skips the teardown
    if exit_now is not None:
        exit_now(code, rest)
    return code


if __name__ == "__main__":
    sys.exit(main())
