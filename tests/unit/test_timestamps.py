"""The models' times: aware UTC datetimes in Python, the same RFC 3339 text in JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from job_operator import core, metrics, names, views
from job_operator.api.models import SeedJob
from job_operator.kube import readable
from job_operator.models import Job, JobStatus, RescheduleRecord, rfc3339
from tests.unit.factories import NOW, make_job

# A Job as the API server stores it after the operator's writes: status times as
# core writes them (microseconds, Z), metadata's as Kubernetes writes them (seconds).
STORED: dict[str, Any] = {
    "metadata": {
        "name": "nightly",
        "namespace": "default",
        "uid": "0b6e8a52-7f43-4d1c-9a43-6d1f2f8c1a10",
        "resourceVersion": "7",
        "generation": 1,
        "creationTimestamp": "2025-03-14T11:00:00Z",
        "deletionTimestamp": "2025-03-14T12:30:00Z",
        "annotations": {names.RESCHEDULE_ANNOTATION: "r-1"},
        "labels": {},
        "managedFields": [],
    },
    "spec": {
        "type": "materialize-view",
        "input": {"dataset_id": 10736},
        "executorClass": "default",
        "maxAutoReschedules": 3,
    },
    "status": {
        "state": "running",
        "executor": "job-executor-2",
        "attempt": 2,
        "startedAt": "2025-03-14T11:50:00.250000Z",
        "updatedAt": "2025-03-14T11:55:00.000001Z",
        "dispatchAfter": "2025-03-14T11:45:01.000000Z",
        "reschedule": {
            "request": "r-1",
            "outcome": "rescheduled",
            "force": False,
            "handledAt": "2025-03-14T11:44:00.123456Z",
            "previousState": "running",
            "previousExecutor": "job-executor-1",
        },
        "cancel": {
            "request": "c-1",
            "outcome": "skipped_terminal",
            "handledAt": "2025-03-14T11:30:00.000000Z",
            "previousState": "completed",
        },
        "rejectedRequests": [
            {
                "annotation": names.CANCEL_ANNOTATION,
                "tokenDigest": "ab" * 32,
                "reason": "InvalidToken",
                "message": "the token is empty",
                "rejectedAt": "2025-03-14T11:20:00.500000Z",
            }
        ],
        "autoReschedules": 1,
        "history": [
            {
                "attempt": 1,
                "executor": "job-executor-1",
                "state": "running",
                "startedAt": "2025-03-14T11:10:00.000000Z",
                "endedAt": "2025-03-14T11:44:00.123456Z",
                "reason": "Rescheduled",
            }
        ],
        "conditions": [
            {
                "type": names.DISPATCHED,
                "status": "True",
                "reason": "ExecutorCreated",
                "message": "attempt 2 on job-executor-2",
                "lastTransitionTime": "2025-03-14T11:45:01.000000Z",
                "observedGeneration": 1,
            }
        ],
        "observedGeneration": 1,
    },
}


def test_a_stored_job_is_written_back_byte_for_byte() -> None:
    job = Job.model_validate(STORED)
    assert json.dumps(job.to_api(), sort_keys=True) == json.dumps(STORED, sort_keys=True)
    # and through the cache's encoding
    again = Job.model_validate_json(job.model_dump_json(by_alias=True))
    assert again == job
    assert again.to_api() == STORED


def test_times_are_aware_utc_datetimes() -> None:
    job = Job.model_validate(STORED)
    status = job.status
    assert status.started_at == datetime(2025, 3, 14, 11, 50, 0, 250000, tzinfo=UTC)
    assert status.reschedule is not None
    assert status.reschedule.handled_at == datetime(2025, 3, 14, 11, 44, 0, 123456, tzinfo=UTC)
    assert job.metadata.creation_timestamp == datetime(2025, 3, 14, 11, tzinfo=UTC)
    moments = [
        status.started_at,
        status.updated_at,
        status.dispatch_after,
        status.cancel and status.cancel.handled_at,
        status.rejected_requests[0].rejected_at,
        status.history[0].started_at,
        status.history[0].ended_at,
        status.conditions[0].last_transition_time,
        job.metadata.deletion_timestamp,
    ]
    for moment in moments:
        assert isinstance(moment, datetime)
        assert moment.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("stored", "moment"),
    [
        ("2025-03-14T12:00:00Z", NOW),  # metav1.Time, to the second
        ("2025-03-14T13:00:00+01:00", NOW),  # an offset
        ("2025-03-14T07:30:00.5-04:30", NOW + timedelta(microseconds=500000)),
        ("2025-03-14t12:00:00z", NOW),  # the API server accepts either case
        ("2025-03-14T12:00:00.123456789Z", NOW + timedelta(microseconds=123456)),  # nanoseconds
    ],
)
def test_kubernetes_forms_are_read_and_written_in_the_operator_form(
    stored: str, moment: datetime
) -> None:
    status = JobStatus.model_validate({"updatedAt": stored})
    assert status.updated_at == moment
    assert status.updated_at is not None and status.updated_at.tzinfo == UTC
    assert status.to_api()["updatedAt"] == rfc3339(moment)


def test_metadata_times_are_written_to_the_second_as_kubernetes_does() -> None:
    job = make_job(creation_timestamp=NOW + timedelta(hours=1))
    assert job.to_api()["metadata"]["creationTimestamp"] == "2025-03-14T13:00:00Z"


@pytest.mark.parametrize(
    ("stored", "why"),
    [
        ("garbage", "not an RFC 3339 time: 'garbage'"),
        ("2025-03-14T12:00:00", "a time without a timezone"),
        ("0000-01-01T00:00:00Z", "not an RFC 3339 time"),  # the API server stores it
        ("9999-12-31T23:00:00-02:00", "a time out of range"),
        (1741953600, "not a time: 1741953600"),
        (datetime(2025, 3, 14, 12), "a time without a timezone"),
    ],
)
def test_a_malformed_time_is_refused_with_a_clear_error(stored: object, why: str) -> None:
    body = {**STORED, "status": {**STORED["status"], "updatedAt": stored}}
    with pytest.raises(ValidationError) as refused:
        Job.model_validate(body)
    assert why in str(refused.value)
    assert "status.updatedAt" in str(refused.value)


def test_a_listed_job_with_an_unreadable_time_is_left_out_and_counted() -> None:
    unreadable = {**STORED, "status": {**STORED["status"], "startedAt": "0000-01-01T00:00:00Z"}}
    errors = metrics.ERRORS.labels("parse")
    before = errors._value.get()
    assert readable(Job, [unreadable, STORED]) == [Job.model_validate(STORED)]
    assert errors._value.get() == before + 1


def test_the_schemas_say_rfc_3339_strings() -> None:
    """The CRD (test_crd checks it) and the HTTP API's document describe a string."""
    time = {"type": "string", "format": "date-time"}
    record = RescheduleRecord.model_json_schema(by_alias=True)
    assert record["properties"]["handledAt"].items() >= time.items()
    for mode in ("validation", "serialization"):
        seed = SeedJob.model_json_schema(mode=mode)["properties"]
        for field in ("created_at", "updated_at", "ended_at"):
            assert seed[field]["anyOf"] == [time, {"type": "null"}]


# --- what core computes with them ------------------------------------------------------


def test_dispatch_waits_out_a_backoff_stored_with_an_offset() -> None:
    after = (NOW + timedelta(seconds=30)).astimezone(timezone(timedelta(hours=1))).isoformat()
    assert after == "2025-03-14T13:00:30+01:00"
    waiting = make_job(state="pending", dispatch_after=after)
    assert core.dispatch_due(waiting, NOW) == timedelta(seconds=30)
    assert core.dispatch_due(waiting, NOW + timedelta(seconds=29)) == timedelta(seconds=1)
    assert core.dispatch_due(waiting, NOW + timedelta(seconds=30)) == timedelta(0)


def test_a_lost_executor_sets_the_backoff_from_now() -> None:
    job = make_job(state="running", executor="job-executor-1", attempt=1)
    decision = core.executor_lost(job, core.Policy(), NOW, "was deleted")
    assert decision.status.dispatch_after == NOW + core.Policy().backoff(1)
    assert decision.status.to_api()["dispatchAfter"] == "2025-03-14T12:00:01.000000Z"


def test_event_repair_compares_instants_not_text() -> None:
    """`since` 12:30Z; a request handled at 13:00+01:00 (12:00Z) is older, though its
    text sorts later; one handled at 12:30Z exactly is repaired."""
    since = NOW + timedelta(minutes=30)

    def reschedule_handled_at(stored: str) -> JobStatus:
        record = {**STORED["status"]["reschedule"], "handledAt": stored}
        return JobStatus.model_validate({"reschedule": record})

    assert core.events(reschedule_handled_at("2025-03-14T13:00:00+01:00"), since=since) == ()
    (event,) = core.events(reschedule_handled_at("2025-03-14T12:30:00Z"), since=since)
    assert event.reason == "Rescheduled"


def test_views_print_the_stored_text() -> None:
    shown = views.seed_job(Job.model_validate(STORED))
    assert (shown["created_at"], shown["updated_at"], shown["ended_at"]) == (
        "2025-03-14T11:00:00Z",
        "2025-03-14T11:55:00.000001Z",
        None,
    )
    assert "\nupdated_at       2025-03-14T11:55:00.000001Z\n" in views.as_text(shown)
