"""The CLI's one line for a request the API server refuses to authenticate or authorise."""

from __future__ import annotations

import json
import re

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from job_operator import cli
from tests.deploy_support import REPO

FORBIDDEN_MESSAGE = (
    'jobs.job-operator.dev "nightly" is forbidden: User "alice" cannot patch resource "jobs" '
    'in API group "job-operator.dev" in the namespace "data"'
)


def api_error(status: int, reason: str, body: object) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = body if isinstance(body, bytes) else json.dumps(body).encode()
    return error


def status(code: int, reason: str, message: str) -> dict[str, object]:
    return {"kind": "Status", "status": "Failure", "code": code, "reason": reason,
            "message": message}  # fmt: skip


def test_forbidden_names_the_user_the_verb_and_the_resource() -> None:
    failure = cli.denied(api_error(403, "Forbidden", status(403, "Forbidden", FORBIDDEN_MESSAGE)))
    assert failure is not None
    assert failure.code == cli.EXIT_DENIED
    assert str(failure) == (
        'forbidden: User "alice" cannot patch resource "jobs" in API group '
        '"job-operator.dev" in the namespace "data"'
    )


def test_forbidden_without_the_usual_prefix_keeps_the_whole_message() -> None:
    failure = cli.denied(api_error(403, "Forbidden", status(403, "Forbidden", "no\nway")))
    assert failure is not None and str(failure) == "forbidden: no way"


def test_unauthorized_says_the_credentials_were_not_accepted() -> None:
    failure = cli.denied(
        api_error(401, "Unauthorized", status(401, "Unauthorized", "Unauthorized"))
    )
    assert failure is not None
    assert failure.code == cli.EXIT_DENIED
    assert str(failure).startswith("unauthorized: the API server did not accept")
    assert "\n" not in str(failure)


def test_a_body_that_is_not_a_status_falls_back_to_the_reason() -> None:
    failure = cli.denied(api_error(403, "Forbidden", b"<html>proxy says no</html>"))
    assert failure is not None and str(failure) == "forbidden: Forbidden"


@pytest.mark.parametrize("error", [api_error(404, "Not Found", b"{}"), ValueError("x")])
def test_other_errors_are_not_denials(error: BaseException) -> None:
    assert cli.denied(error) is None


def test_exit_statuses_are_distinct_and_documented() -> None:
    codes = {
        name: value
        for name, value in vars(cli).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert len(set(codes.values())) == len(codes), codes
    readme = (REPO / "README.md").read_text()
    (line,) = re.findall(r"^Exit status:.*(?:\n[^\n`]+)*", readme, flags=re.MULTILINE)
    for value in codes.values():
        assert re.search(rf"\b{value}\b", line), (value, line)
