"""The list-then-watch loop's decisions (kube.py): when a failure resumes the watch from
the last version seen and when it lists again, and how long it waits first."""

from __future__ import annotations

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from job_operator.kube import Backoff, expired, resume_from, transient

GONE = ApiException(status=410, reason="Expired")
FORBIDDEN = ApiException(status=403, reason="Forbidden")
UNAVAILABLE = ApiException(status=503, reason="Service Unavailable")
REFUSED = ConnectionRefusedError("connection refused")
DROPPED = aiohttp.ClientPayloadError("the response ended early")


@pytest.mark.parametrize("error", [UNAVAILABLE, REFUSED, DROPPED, TimeoutError()])
def test_a_broken_connection_resumes_from_the_last_version(error: Exception) -> None:
    assert transient(error)
    assert resume_from(error, "1234") == "1234"


def test_with_no_version_to_resume_from_it_lists() -> None:
    assert resume_from(REFUSED, "") == ""


@pytest.mark.parametrize(
    "error", [GONE, FORBIDDEN, ApiException(status=401), ValueError("odd"), KeyError("name")]
)
def test_an_expired_version_a_refusal_or_an_odd_answer_lists_again(error: Exception) -> None:
    assert not transient(error)
    assert resume_from(error, "1234") == ""


def test_only_410_is_expired() -> None:
    assert expired(GONE)
    assert not any(expired(e) for e in (FORBIDDEN, UNAVAILABLE, REFUSED, ValueError("410")))


def test_waits_double_from_first_to_most_and_start_again_after_progress() -> None:
    backoff = Backoff(first=0.5, most=3.0)
    assert [backoff.wait(REFUSED) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.progress()
    assert backoff.wait(FORBIDDEN) == 0.5


def test_an_expired_watch_after_progress_lists_again_at_once_but_not_in_a_loop() -> None:
    backoff = Backoff(first=0.5, most=3.0)
    assert backoff.wait(GONE) == 0.0
    assert backoff.wait(GONE) == 1.0  # expired again with no event in between: wait
    backoff.progress()
    assert backoff.wait(GONE) == 0.0


def test_the_wait_stays_bounded_after_many_failures() -> None:
    backoff = Backoff(first=0.1, most=2.0)
    for _ in range(10_000):
        assert backoff.wait(REFUSED) <= 2.0
