"""`bench.run --source-rev`: the benchmark runs exactly a revision's src/, named by commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.run import REPO, extract_revision


def test_a_revision_is_extracted_and_named(tmp_path: Path) -> None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    tree, commit = extract_revision("HEAD", tmp_path)
    assert commit == head
    assert (Path(tree) / "job_operator" / "operator.py").is_file()
    committed = subprocess.run(
        ["git", "show", "HEAD:src/job_operator/operator.py"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    assert (Path(tree) / "job_operator" / "operator.py").read_bytes() == committed
