"""The CLI's one line and exit 6 for a job it cannot read; a bug elsewhere keeps its traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from job_operator import cli
from job_operator.models import Job

YEAR_ZERO = "0000-01-01T00:00:00Z"


def unreadable_job() -> ValidationError:
    """What reading a Job whose status time was edited to year 0 raises."""
    stored = {
        "metadata": {"name": "nightly", "namespace": "data"},
        "spec": {"type": "materialize-view"},
        "status": {"startedAt": YEAR_ZERO},
    }
    with pytest.raises(ValidationError) as raised:
        Job.model_validate(stored)
    return raised.value


def failing_with(error: Exception) -> Callable[[argparse.Namespace], int]:
    def dispatch(_: argparse.Namespace) -> int:
        raise error

    return dispatch


@pytest.mark.parametrize(
    "argv", [["get", "nightly"], ["reschedule", "nightly"], ["cancel", "nightly"]]
)
def test_a_command_reading_an_unreadable_job_says_which_field_and_exits_6(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "dispatch_command", failing_with(unreadable_job()))
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == cli.EXIT_UNREADABLE
    assert capsys.readouterr().err.splitlines() == [
        "job-operator: cannot read the Job: status.startedAt: Value error, not an RFC 3339 "
        f"time: '{YEAR_ZERO}'"
    ]


@pytest.mark.parametrize("argv", [["run"], ["api"], ["simulate"]])
def test_a_validation_error_in_a_long_running_command_is_a_bug_shown_whole(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    error = unreadable_job()
    monkeypatch.setattr(cli, "dispatch_command", failing_with(error))
    with pytest.raises(ValidationError) as raised:  # not exit 6: the traceback is shown
        cli.main(argv)
    assert raised.value is error
    assert cli.failure(argv[0], error) is None


def test_a_cli_error_and_a_denial_keep_their_own_status_in_every_command() -> None:
    refused = cli.CliError("request refused: too long", cli.EXIT_REFUSED)
    assert cli.failure("get", refused) is refused
    denial = cli.failure("run", ApiException(status=403, reason="Forbidden"))
    assert denial is not None and denial.code == cli.EXIT_DENIED
    assert cli.failure("run", RuntimeError("a bug")) is None
