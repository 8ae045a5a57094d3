"""The README is a front page and the user guide (docs/guide/) holds the rest (issue 27): the README
stays short and opens with the two commands, its test command is the one .ci/run runs, the guide's
index lists every page, and every relative link between the README and docs/ resolves, anchors
included, without pointing at files users do not have."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GUIDE = REPO / "docs" / "guide"
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]
SWEEP = "pip install torch==2.13.0 -e . && python -m sweeps.run examples/digits.yaml"


def prose(path: Path) -> str:
    """The page without its fenced code blocks (a `# comment` in a block is not a heading)."""
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1 for repeats."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = 1
        while slug in found:
            slug = f"{re.sub(r'-[0-9]+$', '', slug)}-{n}"
            n += 1
        found.add(slug)
    return found


def test_the_readme_is_short_and_opens_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 400
    blocks = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert blocks[:2] == [SWEEP, ci]
    assert ci == "pip install torch==2.13.0 -e '.[test,bench]' && python -m pytest -q"


def test_the_guide_index_lists_every_page():
    index = (GUIDE / "README.md").read_text()
    pages = {p.name for p in GUIDE.glob("*.md")} - {"README.md"}
    assert pages and all(f"]({name})" in index for name in pages)
    assert "](docs/guide/README.md)" in README.read_text()


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: {target}"
            if "shared" in Path(path).parts or not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(where)
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(where + " (no such heading)")
    assert not broken
