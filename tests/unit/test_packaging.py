"""What ships: the wheel and the image hold job_operator and nothing of the test tooling.

testenv/ (the test API server) and tests/ are development tools; the package must not
import them, the wheel must not contain them, and the image copies only src/.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.deploy_support import REPO

SRC = REPO / "src"
TOOLING = ("testenv", "tests", "bench", "hack")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_package_imports_no_test_tooling() -> None:
    offending = sorted(
        f"{path.relative_to(REPO)}: {module}"
        for path in SRC.rglob("*.py")
        for module in imported_modules(path)
        if module.split(".")[0] in TOOLING
    )
    assert not offending


def test_the_wheel_holds_the_package_and_no_test_tooling(tmp_path: Path) -> None:
    # hatchling is a dev dependency: no build isolation, so no download.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("job_operator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"job_operator"}
    assert "job_operator/cli.py" in names and "job_operator/operator.py" in names
    assert not [n for n in names if any(f"{tool}/" in n for tool in TOOLING)]


def test_the_image_copies_only_src() -> None:
    copies = [
        line.split()[1:]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
    ]
    sources = sorted(source for *given, _target in copies for source in given)
    assert sources == ["README.md", "pyproject.toml", "src"]
