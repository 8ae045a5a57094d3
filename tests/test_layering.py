"""The layers stay layers: no folder imports from one above it, and the read-only commands load neither
torch nor the sweep loop.

objectives/ (tasks and the training loop) imports nothing from sweeps/; storage/ imports nothing from
sweeps/ or objectives/. Inside sweeps/ the folders are floors, lowest first (`SWEEPS_FLOORS`):
config/; search/ and trial/ (a trial samples its search); budget/; confirmation/; results/;
publish/; loop/; and the commands at the top (sweeps/*.py). Checked on the source by an AST scan
of every .py file, so an import inside a function or behind a condition counts as much as one at the
top. The read-only commands only read the store: their `--help` loads no torch and no module of
`sweeps.loop`, checked once here for all of them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "objectives": {"sweeps"},
    "storage": {"sweeps", "objectives"},
}
# sweeps/ folders, lowest floor first; a folder may import its own floor and the floors below it
SWEEPS_FLOORS = [{"config"}, {"search", "trial"}, {"budget"}, {"confirmation"}, {"results"}, {"publish"}, {"loop"}]
READ_ONLY_COMMANDS = ["sweeps.studies", "sweeps.best", "sweeps.report", "sweeps.dashboard", "sweeps.screenshot",
                      "sweeps.schema_cmd"]


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file: `import a.b`, `from a.b import c`
    (also as `a.b.c`, in case c is a module), relative imports resolved against the file's package,
    and importlib.import_module / __import__ called with a literal name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def top_level(name: str) -> str:
    return name.split(".", 1)[0]


def test_the_scan_sees_every_form_of_import(tmp_path):
    """The scanner itself: each way of writing an import is found, and relative ones resolve."""
    source = tmp_path / "objectives" / "training" / "example.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "import sweeps\n"
        "import os, sweeps.config.plan as plan\n"
        "from sweeps.loop import runner\n"
        "def late():\n"
        "    from sweeps import run\n"
        "    import importlib\n"
        "    importlib.import_module('sweeps.report')\n"
        "    __import__('sweeps.dashboard')\n"
        "from . import budget\n"
        "from ..tasks import digits\n"
    )
    names = {name for _, name in imported_modules(source, root=tmp_path)}
    assert {"sweeps", "sweeps.config.plan", "sweeps.loop", "sweeps.loop.runner", "sweeps.run", "sweeps.report",
            "sweeps.dashboard", "os", "importlib"} <= names
    assert {"objectives.training", "objectives.training.budget", "objectives.tasks",
            "objectives.tasks.digits"} <= names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(layer):
    files = sorted((REPO / layer).rglob("*.py"))
    assert files, f"no Python files under {layer}/"
    offending = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in files
        for line, name in imported_modules(path)
        if top_level(name) in FORBIDDEN[layer]
    ]
    assert not offending, f"{layer}/ must not import {sorted(FORBIDDEN[layer])}:\n" + "\n".join(offending)


def floor_of(module: str) -> int | None:
    """The floor of a module under sweeps/ (its folder's index in SWEEPS_FLOORS); the commands
    (sweeps/*.py) are above every folder; None outside sweeps/."""
    parts = module.split(".")
    if parts[0] != "sweeps":
        return None
    folder = parts[1] if len(parts) > 2 or (len(parts) == 2 and (REPO / "sweeps" / parts[1]).is_dir()) else None
    for floor, folders in enumerate(SWEEPS_FLOORS):
        if folder in folders:
            return floor
    return len(SWEEPS_FLOORS)  # a command, or the package's shared modules (cli, errors, exits)


SHARED = {"sweeps", "sweeps.errors", "sweeps.exits", "sweeps.text"}  # imported from every floor; none above config


def shared(name: str) -> bool:
    return name == "sweeps" or any(name == s or name.startswith(f"{s}.") for s in SHARED - {"sweeps"})


def test_sweeps_folders_import_only_their_floor_and_those_below():
    offending = []
    for path in sorted((REPO / "sweeps").rglob("*.py")):
        here = floor_of(module_name(path))
        if here is None or here == len(SWEEPS_FLOORS):
            continue
        for line, name in imported_modules(path):
            there = floor_of(name)
            if there is not None and there > here and not shared(name):
                offending.append(f"{path.relative_to(REPO)}:{line}: imports {name}")
    assert not offending, "a lower sweeps/ folder imports a higher one:\n" + "\n".join(offending)


def test_the_shared_modules_import_no_floor_above_config():
    for name in SHARED - {"sweeps"}:
        path = REPO / (name.replace(".", "/") + ".py")
        above = [n for _, n in imported_modules(path) if (floor_of(n) or 0) > 0 and not shared(n)]
        assert not above, f"{name} imports {above}"


def test_floor_of():
    assert [floor_of(m) for m in ("sweeps.config.plan", "sweeps.trial.record", "sweeps.loop.runner", "sweeps.run",
                                  "sweeps.errors.ConfigError", "optuna")] == [0, 1, 6, 7, 7, None]
    assert shared("sweeps.errors.ConfigError") and not shared("sweeps.errorsome")


def importtime_rows(stderr: str) -> list[tuple[int, str]]:
    """(nesting depth, module name) for each `import time:` line of `python -X importtime` output; the
    name is the last column, indented two spaces per level of nesting."""
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            column = line.rsplit("|", 1)[1]
            name = column.strip()
            if name != "imported package":  # the header line
                rows.append(((len(column) - len(column.lstrip(" ")) - 1) // 2, name))
    return rows


def imported_in_importtime(stderr: str) -> list[str]:
    return [name for _, name in importtime_rows(stderr)]


def import_chain(stderr: str, module: str) -> list[str]:
    """Who imported `module` first: the output lists a module after everything it imported, so its
    importers are the next lines of smaller depth. Outermost first."""
    rows = importtime_rows(stderr)
    for i, (depth, name) in enumerate(rows):
        if name == module:
            chain = [name]
            for outer_depth, outer in rows[i + 1:]:
                if outer_depth < depth:
                    chain.append(outer)
                    depth = outer_depth
            return chain[::-1]
    return []


def test_importtime_parsing():
    sample = ("import time: self [us] | cumulative | imported package\n"
              "import time:       120 |        120 |       torch._C\n"
              "import time:       300 |        420 |   torch\n"
              "import time:        10 |         10 | torchvision_like\n"
              "some other stderr line | torch\n")
    assert imported_in_importtime(sample) == ["torch._C", "torch", "torchvision_like"]
    nested = ("import time:         5 |          5 |       torch\n"
              "import time:         5 |         10 |     objectives.task\n"
              "import time:         5 |         15 |   objectives\n"
              "import time:         5 |          5 |   objectives.training\n"
              "import time:         5 |         25 | sweeps.config.plan\n")
    assert import_chain(nested, "torch") == ["sweeps.config.plan", "objectives", "objectives.task", "torch"]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS)
def test_read_only_commands_load_no_torch_and_no_sweep_loop(command):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", command, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage:" in done.stdout
    imported = imported_in_importtime(done.stderr)
    assert len(imported) > 10, "no importtime output to check"
    for heavy in ("torch", "sweeps.loop"):
        loaded = [name for name in imported if name == heavy or name.startswith(f"{heavy}.")]
        assert not loaded, (f"`python -m {command} --help` imports {heavy} ({len(loaded)} modules), "
                            f"first through {' -> '.join([command, *import_chain(done.stderr, loaded[0])])}")
