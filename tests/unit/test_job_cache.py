"""The operator's cache of jobs: what comes back is the job that went in."""

from __future__ import annotations

from job_operator.core import rfc3339
from job_operator.operator import JobCache
from tests.unit.factories import NOW, make_job, managed_entry


def test_a_job_comes_back_equal_without_its_managed_fields() -> None:
    job = make_job(
        annotations={"job-operator.dev/reschedule": "t1"},
        managed_fields=[managed_entry("kubectl", rfc3339(NOW), "job-operator.dev/reschedule")],
        state="running",
        executor="job-executor-1",
        attempt=2,
        history=[
            {
                "attempt": 1,
                "executor": "job-executor-0",
                "state": "running",
                "reason": "Rescheduled",
            }
        ],
    )
    cache = JobCache()
    cache.remember(job)
    back = cache.get(("default", job.metadata.name))
    assert back is not None
    assert back.metadata.managed_fields == []
    assert back.model_copy(update={"metadata": job.metadata}) == job
    assert back.metadata.model_copy(update={"managed_fields": job.metadata.managed_fields}) == (
        job.metadata
    )


def test_the_latest_version_wins_and_forget_drops_it() -> None:
    cache = JobCache()
    cache.remember(make_job(state="pending"))
    cache.remember(make_job(state="running", executor="job-executor-1", attempt=1))
    key = ("default", "nightly")
    got = cache.get(key)
    assert got is not None and got.status.state == "running"
    assert len(cache) == 1
    cache.forget(key)
    assert cache.get(key) is None and len(cache) == 0
