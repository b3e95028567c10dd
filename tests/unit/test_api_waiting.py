"""The API's job index and waiters, fed events by hand: finding jobs by uid, resolving a
waiter when its token is recorded (or refused), and telling it when its job is deleted."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from job_operator import core, names
from job_operator.api import plan
from job_operator.api.waiting import JobGone, JobIndex, TooManyWaiting
from job_operator.kube import Kube
from tests.unit.api_fakes import raw_job

UID, OTHER = "uid-1", "uid-2"


def recorded(token: str, uid: str = UID) -> dict[str, Any]:
    raw = raw_job("nightly", uid)
    raw["status"]["reschedule"] = {
        "request": token,
        "outcome": "rescheduled",
        "force": False,
        "handledAt": "2026-12-01T10:00:01Z",
        "previousState": "running",
    }
    return raw


def index(max_waiting: int = 10) -> JobIndex:
    return JobIndex(cast(Kube, object()), max_waiting=max_waiting)


def test_jobs_are_found_by_uid_until_deleted() -> None:
    jobs = index()
    jobs.observe("ADDED", raw_job("nightly", UID))
    assert jobs.locate(UID) == ("data", "nightly")
    jobs.observe("DELETED", raw_job("nightly", UID))
    assert jobs.locate(UID) is None


async def test_a_waiter_resolves_on_its_token_only() -> None:
    jobs = index()
    async with jobs.waiter("data", "nightly", "t1") as waiter:
        waiter.uid = UID
        jobs.observe("MODIFIED", recorded("t0"))
        jobs.observe("MODIFIED", recorded("t1", uid=OTHER))  # a re-created job: not ours
        assert not waiter.done.done()
        jobs.observe("MODIFIED", recorded("t1"))
        job = await asyncio.wait_for(waiter.done, 1)
        assert job.status.reschedule is not None and job.status.reschedule.request == "t1"
    assert jobs.waiting == 0 and jobs.waiters == {}


async def test_an_unreadable_job_is_passed_over_and_the_wait_goes_on() -> None:
    """A status time no datetime holds (year 0, stored by the API server): the operator
    leaves the job alone, so its waiter keeps waiting (a 504 with the token, in time);
    the index's watch goes on, for this job's next change and for other jobs."""
    jobs = index()
    async with jobs.waiter("data", "nightly", "t1") as waiter:
        waiter.uid = UID
        unreadable = recorded("t1")
        unreadable["status"]["startedAt"] = "0000-01-01T00:00:00Z"
        jobs.observe("MODIFIED", unreadable)
        assert not waiter.done.done()
        jobs.observe("MODIFIED", recorded("t1"))
        assert (await asyncio.wait_for(waiter.done, 1)).metadata.uid == UID


async def test_a_refused_token_and_a_deleted_job_end_the_wait() -> None:
    jobs = index()
    async with jobs.waiter("data", "nightly", "t1") as refused:
        raw = raw_job("nightly", UID)
        raw["status"]["rejectedRequests"] = [
            {
                "annotation": names.RESCHEDULE_ANNOTATION,
                "tokenDigest": core.token_digest("t1"),
                "reason": "TokenTooLong",
                "message": "too long",
                "rejectedAt": "2026-12-01T10:00:01Z",
            }
        ]
        jobs.observe("MODIFIED", raw)
        with pytest.raises(plan.Refused, match="too long"):
            await refused.done
    async with jobs.waiter("data", "nightly", "t2") as gone:
        gone.uid = UID
        jobs.observe("DELETED", raw_job("nightly", UID))
        with pytest.raises(JobGone):
            await gone.done


async def test_waiting_is_bounded() -> None:
    jobs = index(max_waiting=1)
    async with jobs.waiter("data", "a", "t"):
        with pytest.raises(TooManyWaiting):
            async with jobs.waiter("data", "b", "t"):
                pass
    async with jobs.waiter("data", "b", "t"):
        assert jobs.waiting == 1
