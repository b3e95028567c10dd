"""docs/reference.md is the rendering of the code it describes, and README's module map
names exactly the tree: neither can go stale unnoticed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from job_operator import reference

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "job_operator"


def test_reference_is_current() -> None:
    committed = reference.REFERENCE_PATH.read_text()
    assert committed == reference.rendered(), (
        "docs/reference.md is out of date with the code: run `make reference` "
        "(python -m job_operator.reference) and commit the result"
    )


def module_map() -> dict[str, str]:
    """README's module map (the first code block under "## Development"): each entry's
    path, and the text beside it (continuation lines included)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Development\n", 1)[1]
    block = section.split("```\n", 2)[1]
    entries: dict[str, str] = {}
    path = ""
    for line in block.splitlines():
        if line and not line[0].isspace():
            path, _, text = line.partition(" ")
            entries[path] = text
        else:
            entries[path] += "\n" + line
    return entries


def test_module_map_names_every_module_and_only_those() -> None:
    named = set(re.findall(r"[\w/]+\.py\b", module_map()["src/job_operator/"]))
    modules = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert named == modules, (
        f"README's module map (## Development) misses {sorted(modules - named)} and names "
        f"{sorted(named - modules)}, which src/job_operator/ does not have"
    )


def test_module_map_entries_exist_and_cover_the_top_level() -> None:
    entries = module_map()
    missing = [path for path in entries if not (REPO / path).is_dir()]
    assert not missing, f"README's module map names folders that do not exist: {missing}"
    top = {
        p.name + "/"
        for p in REPO.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".egg-info")
    }
    unnamed = sorted(top - {path.split("/")[0] + "/" for path in entries})
    assert not unnamed, f"README's module map (## Development) does not name {unnamed}"


def test_document_links_stay_in_the_repo_and_resolve() -> None:
    """Every relative link in the Markdown documents names a file or folder of the repo."""
    broken = []
    for document in [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("hack/**/*.md")]:
        for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
            path = target.split("#", 1)[0]
            if not path or re.match(r"[a-z]+:", path):
                continue  # an anchor in the same document, or a web address
            resolved = (document.parent / path).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(f"{document.relative_to(REPO)}: {target}")
    assert not broken, f"links to nothing in the repo: {broken}"


def event_reasons_of(source: str) -> set[str]:
    function = ast.parse(source).body[0]
    call = next(n for n in ast.walk(function) if isinstance(n, ast.Call))
    return reference.strings_of(call.args[1], function, "test")


def test_event_reasons_are_read_from_literals_branches_and_local_variables() -> None:
    assert event_reasons_of('def f():\n    Event("Normal", "A", m, k)') == {"A"}
    assert event_reasons_of('def f():\n    Event("Normal", "A" if x else "B", m, k)') == {"A", "B"}
    source = (
        'def f():\n    r = "A" if x else "B"\n    if y:\n        r = "C"\n    Event("W", r, m, k)'
    )
    assert event_reasons_of(source) == {"A", "B", "C"}
    with pytest.raises(reference.ReferenceError, match="cannot tell"):
        event_reasons_of('def f(reason):\n    Event("Normal", reason, m, k)')
