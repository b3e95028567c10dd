"""Property-based tests of the live `job-operator api`, driven by its own OpenAPI
document: schemathesis (its command line, as CI would run it) generates valid and
invalid requests for every operation and checks every answer: its status, headers,
content type and body conform to the document, none is a server error, and a request
without the bearer token is refused.

Bounded (a few dozen examples per operation, a time budget), about a minute.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from openapi_spec_validator import validate

from testenv.controlplane import Identity
from tests.integration.api_support import Api, api, api_identity, editor, make_api, user
from tests.integration.conftest import Jobs

__all__ = ["api", "api_identity", "editor", "make_api", "user"]  # fixtures, for pytest

EXAMPLES = 25
BUDGET_SECONDS = 60


def test_the_served_document_is_valid_openapi(api: Api) -> None:
    answer = api.call("GET", "/openapi.json")
    assert answer.status == 200
    validate(answer.body)


def test_every_answer_conforms_and_none_is_a_server_error(
    api: Api, editor: Identity, jobs: Jobs, tmp_path: Path
) -> None:
    jobs.create("nightly")
    argv = [
        str(Path(sys.executable).with_name("schemathesis")), "run", api.url("/openapi.json"),
        "--header", f"Authorization: Bearer {editor.token}",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing",  # no stateful phase: the document has no links
        "--max-examples", str(EXAMPLES),
        "--seed", "20261202",
        "--generation-deterministic",
        "--request-timeout", "40",
        "--max-time", str(BUDGET_SECONDS),
        "--workers", "1",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(  # in tmp_path: schemathesis keeps a cache in its folder
        argv, capture_output=True, text=True, timeout=BUDGET_SECONDS + 120, cwd=tmp_path
    )
    assert run.returncode == 0, f"schemathesis found problems:\n{run.stdout[-8000:]}"
