"""The invariant checker must catch each breach it claims to (else resilience tests prove
nothing)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from job_operator import core, names
from job_operator.models import Job
from tests.invariants import Snapshot, check_invariants

UID = "11111111-1111-4111-8111-111111111111"


def request_event(job: dict[str, Any], token: str, reason: str) -> dict[str, Any]:
    model = Job.model_validate(job)
    key = core.request_key(names.RESCHEDULE_ANNOTATION, core.token_digest(token))
    return {
        "metadata": {"name": core.event_name(model, core.Event("Normal", reason, "", key))},
        "involvedObject": {"uid": UID, "name": "a"},
        "reason": reason,
    }


def healthy() -> Snapshot:
    job: dict[str, Any] = {
        "metadata": {"name": "a", "uid": UID},
        "spec": {"type": "t"},
        "status": {
            "state": "running",
            "executor": "job-executor-2",
            "attempt": 2,
            "reschedule": {
                "request": "t2",
                "outcome": "rescheduled",
                "force": False,
                "handledAt": "2026-01-01T00:00:00Z",
                "previousState": "running",
            },
            "history": [
                {
                    "attempt": 1,
                    "executor": "job-executor-1",
                    "state": "running",
                    "reason": "Rescheduled",
                }
            ],
        },
    }
    executor = {
        "metadata": {"name": "job-executor-2"},
        "spec": {"jobRef": {"name": "a", "uid": UID}, "attempt": 2},
    }
    events = [
        request_event(job, "t1", "RescheduleSkipped"),
        request_event(job, "t2", "Rescheduled"),
    ]
    return Snapshot(jobs=[job], executors=[executor], events=events)


TOKENS = {"a": ["t1", "t2"]}


def test_a_healthy_snapshot_passes() -> None:
    report = check_invariants(healthy(), TOKENS)
    assert report, report.violations


def breach_last_token(s: Snapshot) -> None:
    s.jobs[0]["status"]["reschedule"]["request"] = "t1"


def breach_missing_event(s: Snapshot) -> None:
    s.events.pop()


def breach_duplicate_event(s: Snapshot) -> None:
    s.events.append(copy.deepcopy(s.events[-1]))


def breach_terminal_reset(s: Snapshot) -> None:
    s.jobs[0]["status"]["history"][0]["state"] = "completed"


def breach_two_live_executors(s: Snapshot) -> None:
    extra = copy.deepcopy(s.executors[0])
    extra["metadata"]["name"] = "job-executor-3"
    s.executors.append(extra)


def breach_missing_executor(s: Snapshot) -> None:
    s.executors.clear()


def breach_reused_executor(s: Snapshot) -> None:
    s.jobs[0]["status"]["history"][0]["executor"] = "job-executor-2"


def breach_dangling(s: Snapshot) -> None:
    s.executors.append(
        {
            "metadata": {"name": "job-executor-9"},
            "spec": {"jobRef": {"name": "gone", "uid": "other"}, "attempt": 1},
        }
    )


@pytest.mark.parametrize(
    "breach",
    [
        breach_last_token,
        breach_missing_event,
        breach_duplicate_event,
        breach_terminal_reset,
        breach_two_live_executors,
        breach_missing_executor,
        breach_reused_executor,
        breach_dangling,
    ],
)
def test_each_breach_is_reported(breach: Any) -> None:
    snapshot = healthy()
    breach(snapshot)
    report = check_invariants(snapshot, TOKENS)
    assert not report and report.violations
