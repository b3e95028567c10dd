"""The operator's cache of jobs: what comes back is the job that went in, less the
managedFields it never reads."""

from __future__ import annotations

from job_operator import names, requests
from job_operator.cache import JobCache
from job_operator.models import Job
from tests.unit.factories import make_job, managed_entry

EARLIER, LATER = "2025-03-14T12:00:00Z", "2025-03-14T12:05:00Z"  # managedFields times


def test_a_job_comes_back_equal_but_for_managed_fields() -> None:
    job = make_job(
        annotations={names.RESCHEDULE_ANNOTATION: "t1", "team": "data"},
        managed_fields=[
            managed_entry("kubectl-client-side-apply", EARLIER, "team"),
            managed_entry("on-call", LATER, names.RESCHEDULE_ANNOTATION, "team"),
        ],
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
    assert back.model_copy(update={"metadata": job.metadata}) == job
    assert back.metadata.model_copy(update={"managed_fields": job.metadata.managed_fields}) == (
        job.metadata
    )
    # Only who wrote a request annotation, and when, is kept of managedFields.
    assert back.metadata.managed_fields == [
        {
            "manager": "on-call",
            "time": LATER,
            "fieldsV1": {"f:metadata": {"f:annotations": {f"f:{names.RESCHEDULE_ANNOTATION}": {}}}},
        }
    ]
    for annotation in requests.REQUEST_ANNOTATIONS:
        assert requests.requested_by(back, annotation) == requests.requested_by(job, annotation)
    assert requests.requested_by(back, names.RESCHEDULE_ANNOTATION) == "on-call"


def at_version(job: Job, version: str) -> Job:
    return job.model_copy(
        update={"metadata": job.metadata.model_copy(update={"resource_version": version})}
    )


def test_the_latest_version_wins_and_forget_drops_it() -> None:
    cache = JobCache()
    key = ("default", "nightly")
    assert cache.remember(make_job(state="pending"))
    assert cache.remember(
        at_version(make_job(state="running", executor="job-executor-1", attempt=1), "3")
    )
    # An older version (a watch event behind our own write) and the same one are not kept.
    assert not cache.remember(at_version(make_job(state="pending"), "2"))
    assert not cache.is_new(key, "3") and cache.is_new(key, "4")
    got = cache.get(key)
    assert got is not None and got.status.state == "running"
    assert key in cache
    cache.forget(key)
    assert cache.get(key) is None and key not in cache
