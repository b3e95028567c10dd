"""The invariant checker must catch each breach it claims to (else resilience tests prove
nothing)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from job_operator import core, names
from job_operator.models import Job
from tests.invariants import ClusterLedger, Snapshot, check_invariants, late_request_events

UID = "11111111-1111-4111-8111-111111111111"


def request_event(job: dict[str, Any], token: str, reason: str) -> dict[str, Any]:
    model = Job.model_validate(job)
    key = core.request_key(names.RESCHEDULE_ANNOTATION, core.token_digest(token))
    return {
        "metadata": {"name": core.event_name(model, key)},
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


# --- the ledger of clusters, from audit events -------------------------------------------

NS = "storm"


def audit(verb: str, name: str, code: int, attempt: int = 1, uid: str = UID) -> dict[str, Any]:
    """An audit event (ResponseComplete) about an ExecutorCluster in NS."""
    event: dict[str, Any] = {
        "stage": "ResponseComplete",
        "verb": verb,
        "objectRef": {
            "resource": names.EXECUTOR_PLURAL,
            "apiGroup": names.GROUP,
            "namespace": NS,
            "name": name,
        },
        "responseStatus": {"code": code},
    }
    if verb == "create":
        event["requestObject"] = {"spec": {"jobRef": {"name": "a", "uid": uid}, "attempt": attempt}}
    return event


def ledger_of(*events: dict[str, Any]) -> ClusterLedger:
    ledger = ClusterLedger(NS)
    ledger.follow(events)
    return ledger


def test_a_reschedule_handover_is_no_breach() -> None:
    ledger = ledger_of(
        audit("create", "e1", 201, attempt=1),
        audit("create", "e2", 201, attempt=2),  # made before the status write names it
        audit("delete", "e1", 200),  # the one left behind, deleted after
        audit("create", "e3", 201, attempt=3),
        audit("create", "other", 201, attempt=1, uid="another job"),
    )
    assert ledger.violations() == []


def test_two_live_clusters_for_one_attempt_are_reported() -> None:
    ledger = ledger_of(
        audit("create", "e1", 201, attempt=2),
        audit("create", "e2", 201, attempt=2),
        audit("delete", "e1", 200),  # the duplicate cleaned up later: still a breach
    )
    assert len(ledger.violations()) == 1


def test_a_cluster_for_an_older_attempt_than_a_live_one_is_reported() -> None:
    ledger = ledger_of(audit("create", "e2", 201, attempt=2), audit("create", "e1", 201))
    assert len(ledger.violations()) == 1


def test_a_create_cut_short_counts_once_seen() -> None:
    killed = audit("create", "e1", 504)  # stored, but its client was killed
    again = audit("create", "e2", 201)
    assert ledger_of(killed, again).violations() == []  # e1 may not exist
    assert len(ledger_of(killed, again, audit("get", "e1", 200)).violations()) == 1
    assert len(ledger_of(killed, again, audit("delete", "e1", 200)).violations()) == 1
    listed = ledger_of(killed, again)
    listed.agrees_with([{"metadata": {"name": "e1"}}, {"metadata": {"name": "e2"}}])
    assert len(listed.violations()) == 1


def test_refused_requests_change_nothing() -> None:
    ledger = ledger_of(
        audit("create", "e1", 201),
        audit("create", "e1", 409),
        audit("delete", "e1", 404),
        audit("create", "e2", 422),
    )
    assert list(ledger.clusters) == ["e1"] and ledger.clusters["e1"].deleted is None


def test_the_ledger_checks_itself_against_a_listing() -> None:
    ledger = ledger_of(audit("create", "e1", 201), audit("create", "e2", 201, uid="b"))
    assert ledger.agrees_with([{"metadata": {"name": "e1"}}, {"metadata": {"name": "e2"}}]) == []
    assert ledger.agrees_with([{"metadata": {"name": "e1"}}])  # e2 vanished unseen
    assert ledger.agrees_with([{"metadata": {"name": "e1"}}, {"metadata": {"name": "x"}}])


def test_a_late_request_event_is_reported() -> None:
    settled = healthy().events
    assert late_request_events(settled, settled) == []
    again = {**settled[0], "count": 2}  # the same event posted again
    assert late_request_events(settled, [again])
    other = {**settled[0], "metadata": {"name": "a.second"}}  # another name, same request
    assert late_request_events(settled, [other])
    unrelated = {**other, "reason": "ExecutorLost"}
    assert late_request_events(settled, [unrelated]) == []
