"""Unit tests of the state machine in job_operator.core, one group per rule (README)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest

from job_operator import core, executors, names, requests
from job_operator.core import Decision, Policy
from job_operator.models import (
    HISTORY_LIMIT,
    TOKEN_MAX_LENGTH,
    CancelRecord,
    Condition,
    HistoryEntry,
    Job,
    JobState,
    JobStatus,
    RescheduleRecord,
)
from job_operator.requests import Request
from tests.unit.factories import (
    JOB_UID,
    NOW,
    annotated,
    events_of,
    let_go,
    make_executor,
    make_job,
    managed_entry,
    with_status,
)

RESCHEDULE = names.RESCHEDULE_ANNOTATION
FORCE = names.RESCHEDULE_FORCE_ANNOTATION
CANCEL = names.CANCEL_ANNOTATION

STATES: tuple[JobState, ...] = ("pending", "running", "completed", "cancelled", "failed")
TERMINAL: tuple[JobState, ...] = ("completed", "cancelled", "failed")
NON_TERMINAL: tuple[JobState, ...] = ("pending", "running")
PHASES = ("Provisioning", "Running", "Succeeded", "Failed", "Terminated")

OLD_EXECUTOR = "job-executor-11111111-1111-4111-8111-111111111111"
NEW_EXECUTOR = "job-executor-22222222-2222-4222-8222-222222222222"
EARLIER = NOW - timedelta(hours=1)
STARTED = NOW - timedelta(minutes=10)
ENDED = NOW - timedelta(minutes=5)
RESULT = {"dataset_id": 10736, "snapshot_id": 1724919539450264600}
POLICY = Policy()

FIRST_ATTEMPT = HistoryEntry(
    attempt=1,
    executor="job-executor-00000000-0000-4000-8000-000000000000",
    state="running",
    started_at=EARLIER,
    ended_at=EARLIER,
    reason="ExecutorLost",
)
DISPATCHED_TRUE = Condition(
    type=names.DISPATCHED,
    status="True",
    reason="ExecutorCreated",
    message="attempt 2",
    last_transition_time=EARLIER,
)


def job_in(state: JobState, **overrides: Any) -> Job:
    """A job in `state` on its second attempt, shaped as the operator leaves it."""
    status: dict[str, Any] = {
        "state": state,
        "attempt": 2,
        "executor": OLD_EXECUTOR,
        "updated_at": ENDED,
        "history": [FIRST_ATTEMPT],
        "conditions": [DISPATCHED_TRUE],
    }
    if state == "pending":  # dispatched, the cluster still provisioning
        status.update(auto_reschedules=2)
    elif state == "running":
        status.update(started_at=STARTED, auto_reschedules=2)
    elif state == "completed":
        status.update(started_at=STARTED, ended_at=ENDED, result=RESULT, reason="Succeeded")
    elif state == "cancelled":
        status.update(executor=None, started_at=STARTED, ended_at=ENDED, reason="Cancelled")
    else:
        status.update(started_at=STARTED, ended_at=ENDED, reason="ExecutorFailed")
    status.update(overrides)
    annotations = status.pop("annotations", None)
    return make_job(annotations=annotations, **status)


def requesting(job: Job, token: str, *, force: str | None = None) -> Job:
    """`job` with a reschedule request `token` (and the force annotation set to `force`)."""
    annotations = {RESCHEDULE: token}
    if force is not None:
        annotations[FORCE] = force
    return annotated(job, annotations)


def reasons(decision: Decision) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in events_of(decision)]


def condition(status: JobStatus, type_: str) -> Condition:
    found = status.condition(type_)
    assert found is not None, f"no {type_} condition in {status.conditions}"
    return found


def apply(job: Job, decision: Decision) -> Job:
    return job.model_copy(update={"status": decision.status})


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --- reading requests -------------------------------------------------------------------


@pytest.mark.parametrize("annotations", [{}, {RESCHEDULE: ""}, {FORCE: "1"}, {CANCEL: ""}])
def test_absent_or_empty_annotation_is_no_request(annotations: dict[str, str]) -> None:
    job = annotated(job_in("running"), annotations)
    assert requests.pending_request(job, RESCHEDULE) is None
    assert requests.pending_request(job, CANCEL) is None
    decision = core.handle_requests(job, NOW)
    assert decision.status == job.status
    assert events_of(decision) == ()
    assert let_go(decision) is None
    assert decision.status == job.status


@pytest.mark.parametrize(
    ("force_annotation", "forced"),
    [
        (None, False),
        ("t-2", True),  # equals the token
        ("t-1", False),  # a stale force from an earlier request
        ("", False),
        ("true", False),  # force is a token, not a flag
    ],
)
def test_force_only_when_force_annotation_equals_token(
    force_annotation: str | None, forced: bool
) -> None:
    job = requesting(job_in("running"), "t-2", force=force_annotation)
    request = requests.pending_request(job, RESCHEDULE)
    assert request == Request(RESCHEDULE, "t-2", forced, None)


def test_force_annotation_does_not_apply_to_cancel() -> None:
    job = annotated(job_in("running"), {CANCEL: "c-1", FORCE: "c-1"})
    assert requests.pending_request(job, CANCEL) == Request(CANCEL, "c-1", False, None)


def test_same_token_is_handled_once() -> None:
    job = requesting(job_in("running"), "t-1")
    first = core.handle_requests(job, NOW)
    assert first.status.reschedule is not None
    assert first.status.reschedule.request == "t-1"
    handled = apply(job, first)
    assert requests.pending_request(handled, RESCHEDULE) is None
    again = core.handle_requests(handled, NOW + timedelta(minutes=1))
    assert again.status == handled.status
    assert events_of(again) == ()
    assert let_go(again) is None


def test_new_token_is_handled_again() -> None:
    handled = apply(job := requesting(job_in("running"), "t-1"), core.handle_requests(job, NOW))
    # the job has been dispatched again in the meantime
    running = with_status(handled, state="running", executor=NEW_EXECUTOR, attempt=3)
    later = NOW + timedelta(minutes=1)
    decision = core.handle_requests(requesting(running, "t-2"), later)
    record = decision.status.reschedule
    assert record is not None
    assert (record.request, record.outcome, record.handled_at) == (
        "t-2",
        "rescheduled",
        later,
    )
    assert record.previous_executor == NEW_EXECUTOR
    assert let_go(decision) == NEW_EXECUTOR
    assert decision.status.state == "pending"


def test_reapplying_an_already_handled_token_with_force_added_does_nothing() -> None:
    """The token decides; adding force for an already handled token asks nothing new."""
    skipped = core.handle_requests(job := requesting(job_in("completed"), "t-1"), NOW)
    handled = apply(job, skipped)
    forced_late = requesting(handled, "t-1", force="t-1")
    decision = core.handle_requests(forced_late, NOW)
    assert decision.status == handled.status
    assert events_of(decision) == ()


# --- requested_by from managedFields ----------------------------------------------------


def test_requested_by_reads_the_annotation_owner() -> None:
    job = make_job(
        managed_fields=[
            managed_entry("kubectl-create", "2025-03-14T10:00:00Z"),
            managed_entry("kubectl-annotate", "2025-03-14T11:00:00Z", RESCHEDULE),
        ]
    )
    assert requests.requested_by(job, RESCHEDULE) == "kubectl-annotate"


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_requested_by_latest_time_wins(order: tuple[int, int]) -> None:
    entries = [
        managed_entry("flux", "2025-03-14T10:00:00Z", RESCHEDULE),
        managed_entry("job-operator-cli", "2025-03-14T11:30:00Z", RESCHEDULE, FORCE),
    ]
    job = make_job(managed_fields=[entries[i] for i in order])
    assert requests.requested_by(job, RESCHEDULE) == "job-operator-cli"


def test_requested_by_ignores_owners_of_other_annotations() -> None:
    job = make_job(
        managed_fields=[
            managed_entry("flux", "2025-03-14T10:00:00Z", RESCHEDULE),
            managed_entry("forcer", "2025-03-14T12:00:00Z", FORCE),  # newer, other key
            managed_entry("canceller", "2025-03-14T12:30:00Z", CANCEL),
        ]
    )
    assert requests.requested_by(job, RESCHEDULE) == "flux"
    assert requests.requested_by(job, CANCEL) == "canceller"
    assert requests.requested_by(make_job(), RESCHEDULE) is None


def test_requested_by_is_recorded_in_the_outcome() -> None:
    job = requesting(
        make_job(
            state="running",
            executor=OLD_EXECUTOR,
            attempt=1,
            managed_fields=[managed_entry("kubectl-annotate", "2025-03-14T11:00:00Z", RESCHEDULE)],
        ),
        "t-1",
    )
    request = requests.pending_request(job, RESCHEDULE)
    assert request is not None
    assert request.requested_by == "kubectl-annotate"
    record = core.handle_requests(job, NOW).status.reschedule
    assert record is not None
    assert record.requested_by == "kubectl-annotate"


# --- reschedule: the table ----------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True], ids=["unforced", "forced"])
@pytest.mark.parametrize("state", STATES)
def test_reschedule_outcome_table(state: JobState, force: bool) -> None:
    job = requesting(job_in(state), "t-1", force="t-1" if force else None)
    decision = core.handle_requests(job, NOW)
    record = decision.status.reschedule
    assert record is not None
    skipped = state in TERMINAL and not force
    assert record == RescheduleRecord(
        request="t-1",
        outcome="skipped_terminal" if skipped else "rescheduled",
        force=force,
        handled_at=NOW,
        previous_state=state,
        previous_executor=job.status.executor,
        requested_by=None,
    )
    assert decision.status.state == (state if skipped else "pending")
    assert reasons(decision) == [("Normal", "RescheduleSkipped" if skipped else "Rescheduled")]
    rescheduled = condition(decision.status, names.RESCHEDULED)
    assert rescheduled.status == ("False" if skipped else "True")
    assert rescheduled.reason == (
        "SkippedTerminal" if skipped else ("Forced" if force else "ManualRequest")
    )
    assert rescheduled.last_transition_time == NOW
    valid = condition(decision.status, names.RESCHEDULE_REQUEST_VALID)
    assert (valid.status, valid.reason) == ("True", "Accepted")


@pytest.mark.parametrize("force", [False, True], ids=["unforced", "forced"])
@pytest.mark.parametrize("state", NON_TERMINAL)
def test_reschedule_non_terminal_requeues(state: JobState, force: bool) -> None:
    job = requesting(job_in(state, dispatch_after=None), "t-1", force="t-1" if force else None)
    old = job.status
    decision = core.handle_requests(job, NOW)
    new = decision.status
    assert new.state == "pending"
    assert new.executor is None
    assert let_go(decision) == OLD_EXECUTOR
    assert new.attempt == old.attempt  # the next dispatch counts the attempt
    assert new.auto_reschedules == 0  # the manual request resets the automatic budget
    assert new.dispatch_after is None
    assert new.result is None
    assert new.started_at is None
    assert new.ended_at is None
    assert new.updated_at == NOW
    assert new.history == [
        FIRST_ATTEMPT,
        HistoryEntry(
            attempt=2,
            executor=OLD_EXECUTOR,
            state=state,
            started_at=old.started_at,
            ended_at=NOW,
            reason="Rescheduled",
        ),
    ]
    dispatched = condition(new, names.DISPATCHED)
    assert (dispatched.status, dispatched.last_transition_time) == ("False", NOW)
    assert core.dispatch_due(apply(job, decision), NOW) == timedelta(0)


def test_reschedule_clears_a_pending_backoff() -> None:
    job = requesting(
        job_in(
            "pending",
            executor=None,
            auto_reschedules=2,
            dispatch_after=NOW + timedelta(seconds=30),
        ),
        "t-1",
    )
    assert core.dispatch_due(job, NOW) == timedelta(seconds=30)
    decision = core.handle_requests(job, NOW)
    assert decision.status.dispatch_after is None
    assert decision.status.auto_reschedules == 0
    assert core.dispatch_due(apply(job, decision), NOW) == timedelta(0)


def test_reschedule_pending_without_executor_appends_no_history() -> None:
    job = requesting(job_in("pending", executor=None), "t-1")
    decision = core.handle_requests(job, NOW)
    assert decision.status.reschedule is not None
    assert decision.status.reschedule.outcome == "rescheduled"
    assert decision.status.reschedule.previous_executor is None
    assert decision.status.history == [FIRST_ATTEMPT]
    assert decision.status.state == "pending"
    assert let_go(decision) is None
    assert reasons(decision) == [("Normal", "Rescheduled")]


@pytest.mark.parametrize("state", TERMINAL)
@pytest.mark.parametrize("force", [None, "t-0"], ids=["no-force", "stale-force"])
def test_reschedule_terminal_unforced_changes_only_the_record(
    state: JobState, force: str | None
) -> None:
    job = requesting(job_in(state), "t-1", force=force)
    old = job.status
    decision = core.handle_requests(job, NOW)
    new = decision.status
    assert new.reschedule is not None
    assert new.reschedule.outcome == "skipped_terminal"
    assert new.reschedule.force is False
    # state, executor, attempt, result, history, times... all untouched
    for field in (
        "state",
        "executor",
        "attempt",
        "result",
        "history",
        "started_at",
        "ended_at",
        "updated_at",
        "reason",
        "auto_reschedules",
        "dispatch_after",
        "cancel",
        "rejected_requests",
    ):
        assert getattr(new, field) == getattr(old, field), field
    # ... and nothing else beyond the record and the two conditions
    assert new.model_copy(update={"reschedule": None, "conditions": old.conditions}) == old
    assert condition(new, names.DISPATCHED) == DISPATCHED_TRUE
    skipped = condition(new, names.RESCHEDULED)
    assert (skipped.status, skipped.reason) == ("False", "SkippedTerminal")
    assert {c.type for c in new.conditions} == {
        names.DISPATCHED,
        names.RESCHEDULED,
        names.RESCHEDULE_REQUEST_VALID,
    }
    assert let_go(decision) is None
    assert reasons(decision) == [("Normal", "RescheduleSkipped")]


@pytest.mark.parametrize("state", TERMINAL)
def test_reschedule_terminal_forced_moves_result_and_end_into_history(state: JobState) -> None:
    job = requesting(job_in(state), "t-1", force="t-1")
    old = job.status
    decision = core.handle_requests(job, NOW)
    new = decision.status
    assert new.reschedule is not None
    assert (new.reschedule.outcome, new.reschedule.force) == ("rescheduled", True)
    assert new.state == "pending"
    assert new.executor is None
    assert new.result is None
    assert new.ended_at is None
    assert new.started_at is None
    assert new.reason == "Rescheduled"
    assert new.history == [
        FIRST_ATTEMPT,
        HistoryEntry(
            attempt=2,
            executor=old.executor,
            state=state,
            started_at=STARTED,
            ended_at=ENDED,  # the attempt's own end, not the time of the request
            reason="Rescheduled",
            result=old.result,
        ),
    ]
    assert let_go(decision) == old.executor
    reason = condition(new, names.RESCHEDULED).reason
    assert reason == "Forced"
    assert reasons(decision) == [("Normal", "Rescheduled")]


def test_forced_reschedule_of_completed_keeps_its_result_in_history() -> None:
    job = requesting(job_in("completed"), "t-1", force="t-1")
    history = core.handle_requests(job, NOW).status.history
    assert history[-1].result == RESULT
    assert history[-1].state == "completed"


def test_history_is_bounded() -> None:
    full = [
        HistoryEntry(attempt=i, executor=f"job-executor-{i}", state="running", reason="Rescheduled")
        for i in range(1, HISTORY_LIMIT + 1)
    ]
    job = requesting(job_in("running", history=full, attempt=HISTORY_LIMIT + 1), "t-1")
    history = core.handle_requests(job, NOW).status.history
    assert len(history) == HISTORY_LIMIT == 20
    assert history[:-1] == full[1:]  # the oldest dropped
    assert history[-1].attempt == HISTORY_LIMIT + 1
    assert history[-1].executor == OLD_EXECUTOR


def test_history_is_bounded_on_executor_loss() -> None:
    full = [
        HistoryEntry(
            attempt=i, executor=f"job-executor-{i}", state="running", reason="ExecutorLost"
        )
        for i in range(1, HISTORY_LIMIT + 1)
    ]
    job = job_in("running", history=full, attempt=HISTORY_LIMIT + 1, auto_reschedules=0)
    history = core.executor_lost(job, POLICY, NOW, "was deleted").status.history
    assert len(history) == HISTORY_LIMIT
    assert history[:-1] == full[1:]
    assert history[-1].attempt == HISTORY_LIMIT + 1


# --- invalid requests ----------------------------------------------------------------


def test_token_at_the_limit_is_accepted() -> None:
    token = "x" * TOKEN_MAX_LENGTH
    decision = core.handle_requests(requesting(job_in("running"), token), NOW)
    assert decision.status.reschedule is not None
    assert decision.status.reschedule.request == token
    assert decision.status.state == "pending"


@pytest.mark.parametrize("force", [False, True], ids=["unforced", "forced"])
@pytest.mark.parametrize("state", STATES)
def test_over_long_token_is_rejected_without_state_change(state: JobState, force: bool) -> None:
    token = "9" * (TOKEN_MAX_LENGTH + 1)
    job = requesting(job_in(state), token, force=token if force else None)
    old = job.status
    decision = core.handle_requests(job, NOW)
    new = decision.status
    assert (
        new.model_copy(
            update={"rejected_requests": old.rejected_requests, "conditions": old.conditions}
        )
        == old
    )
    assert new.reschedule is None
    assert let_go(decision) is None
    [rejected] = new.rejected_requests
    assert rejected.annotation == RESCHEDULE
    assert rejected.token_digest == digest(token)
    assert rejected.reason == "TokenTooLong"
    assert rejected.rejected_at == NOW
    valid = condition(new, names.RESCHEDULE_REQUEST_VALID)
    assert (valid.status, valid.reason) == ("False", "TokenTooLong")
    assert str(TOKEN_MAX_LENGTH) in valid.message
    assert new.condition(names.RESCHEDULED) is None
    assert reasons(decision) == [("Warning", "InvalidRescheduleRequest")]
    assert events_of(decision)[0].message == valid.message


def test_rejected_token_is_not_retried_and_a_later_valid_token_is_handled() -> None:
    long_token = "7" * 300
    job = requesting(job_in("running"), long_token)
    rejected = apply(job, core.handle_requests(job, NOW))
    assert requests.pending_request(rejected, RESCHEDULE) is None
    again = core.handle_requests(rejected, NOW + timedelta(seconds=5))
    assert again.status == rejected.status
    assert events_of(again) == ()

    later = NOW + timedelta(seconds=10)
    decision = core.handle_requests(requesting(rejected, "t-2"), later)
    assert decision.status.reschedule is not None
    assert decision.status.reschedule.request == "t-2"
    assert decision.status.state == "pending"
    valid = condition(decision.status, names.RESCHEDULE_REQUEST_VALID)
    assert (valid.status, valid.reason) == ("True", "Accepted")
    assert valid.last_transition_time == later


def test_a_second_over_long_token_is_rejected_too() -> None:
    job = requesting(job_in("running"), "a" * 300)
    rejected = apply(job, core.handle_requests(job, NOW))
    decision = core.handle_requests(requesting(rejected, "b" * 300), NOW)
    assert [r.token_digest for r in decision.status.rejected_requests] == [digest("b" * 300)]
    assert reasons(decision) == [("Warning", "InvalidRescheduleRequest")]
    assert decision.status.state == "running"


def test_over_long_cancel_token_is_rejected() -> None:
    token = "c" * (TOKEN_MAX_LENGTH + 1)
    job = annotated(job_in("running"), {CANCEL: token})
    decision = core.handle_requests(job, NOW)
    assert decision.status.state == "running"
    assert decision.status.cancel is None
    assert let_go(decision) is None
    [rejected] = decision.status.rejected_requests
    assert (rejected.annotation, rejected.token_digest) == (CANCEL, digest(token))
    valid = condition(decision.status, names.CANCEL_REQUEST_VALID)
    assert (valid.status, valid.reason) == ("False", "TokenTooLong")
    assert reasons(decision) == [("Warning", "InvalidCancelRequest")]
    assert requests.pending_request(apply(job, decision), CANCEL) is None


@pytest.mark.parametrize("state", ["running", "completed"])
def test_a_later_valid_cancel_clears_the_rejection(state: JobState) -> None:
    job = annotated(job_in(state), {CANCEL: "c" * 300})
    rejected = apply(job, core.handle_requests(job, NOW))
    assert condition(rejected.status, names.CANCEL_REQUEST_VALID).status == "False"
    later = NOW + timedelta(seconds=10)
    decision = core.handle_requests(annotated(rejected, {CANCEL: "c-2"}), later)
    assert decision.status.cancel is not None
    assert decision.status.cancel.request == "c-2"
    valid = condition(decision.status, names.CANCEL_REQUEST_VALID)
    assert (valid.status, valid.reason) == ("True", "Accepted")
    assert valid.last_transition_time == later


def test_a_valid_cancel_adds_no_validity_condition_of_its_own() -> None:
    decision = core.handle_requests(annotated(job_in("running"), {CANCEL: "c-1"}), NOW)
    assert decision.status.condition(names.CANCEL_REQUEST_VALID) is None


# --- cancel ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", NON_TERMINAL)
def test_cancel_non_terminal(state: JobState) -> None:
    job = annotated(job_in(state), {CANCEL: "c-1"})
    decision = core.handle_requests(job, NOW)
    new = decision.status
    assert new.state == "cancelled"
    assert new.executor is None
    assert new.ended_at == NOW
    assert new.dispatch_after is None
    assert new.cancel == CancelRecord(
        request="c-1", outcome="cancelled", handled_at=NOW, previous_state=state
    )
    assert let_go(decision) == OLD_EXECUTOR
    assert reasons(decision) == [("Normal", "Cancelled")]
    assert new.reschedule is None


def test_cancel_pending_without_executor_deletes_nothing() -> None:
    job = annotated(
        job_in("pending", executor=None, dispatch_after=NOW + timedelta(seconds=9)),
        {CANCEL: "c-1"},
    )
    decision = core.handle_requests(job, NOW)
    assert decision.status.state == "cancelled"
    assert decision.status.dispatch_after is None
    assert let_go(decision) is None
    assert core.dispatch_due(apply(job, decision), NOW) is None


@pytest.mark.parametrize("state", TERMINAL)
def test_cancel_terminal_is_skipped(state: JobState) -> None:
    job = annotated(job_in(state), {CANCEL: "c-1"})
    old = job.status
    decision = core.handle_requests(job, NOW)
    assert decision.status.cancel == CancelRecord(
        request="c-1", outcome="skipped_terminal", handled_at=NOW, previous_state=state
    )
    assert decision.status.model_copy(update={"cancel": None}) == old
    assert let_go(decision) is None
    assert reasons(decision) == [("Normal", "CancelSkipped")]


def test_cancel_is_handled_once_per_token() -> None:
    job = annotated(job_in("running"), {CANCEL: "c-1"})
    cancelled = apply(job, core.handle_requests(job, NOW))
    assert requests.pending_request(cancelled, CANCEL) is None
    again = core.handle_requests(cancelled, NOW + timedelta(seconds=1))
    assert again.status == cancelled.status
    assert events_of(again) == ()
    # a new token on the now terminal job is handled, and skipped
    later = core.handle_requests(annotated(cancelled, {CANCEL: "c-2"}), NOW)
    assert later.status.cancel is not None
    assert (later.status.cancel.request, later.status.cancel.outcome) == (
        "c-2",
        "skipped_terminal",
    )


def test_cancel_and_unforced_reschedule_together_cancel_first() -> None:
    job = annotated(job_in("running"), {CANCEL: "c-1", RESCHEDULE: "t-1"})
    decision = core.handle_requests(job, NOW)
    new = decision.status
    assert new.state == "cancelled"
    assert new.cancel is not None
    assert new.cancel.outcome == "cancelled"
    assert new.reschedule is not None
    assert (new.reschedule.outcome, new.reschedule.previous_state) == (
        "skipped_terminal",
        "cancelled",
    )
    assert let_go(decision) == OLD_EXECUTOR
    assert reasons(decision) == [("Normal", "Cancelled"), ("Normal", "RescheduleSkipped")]
    # both tokens are now handled
    assert core.handle_requests(apply(job, decision), NOW).status == new


def test_cancel_and_forced_reschedule_together_end_pending() -> None:
    job = annotated(job_in("running"), {CANCEL: "c-1", RESCHEDULE: "t-1", FORCE: "t-1"})
    decision = core.handle_requests(job, NOW)
    new = decision.status
    assert new.state == "pending"
    assert new.cancel is not None
    assert new.cancel.outcome == "cancelled"
    assert new.reschedule is not None
    assert (new.reschedule.outcome, new.reschedule.previous_state) == ("rescheduled", "cancelled")
    assert new.history[-1].state == "cancelled"
    assert let_go(decision) == OLD_EXECUTOR  # the cancel's deletion is kept
    assert reasons(decision) == [("Normal", "Cancelled"), ("Normal", "Rescheduled")]


# --- dispatch ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", STATES)
def test_dispatch_due_only_for_pending_without_executor(state: JobState) -> None:
    assert core.dispatch_due(job_in(state), NOW) is None  # all of them have an executor
    expected = timedelta(0) if state == "pending" else None
    assert core.dispatch_due(job_in(state, executor=None), NOW) == expected


def test_dispatch_due_not_for_a_deleted_job() -> None:
    job = make_job(deletion_timestamp=NOW)
    assert core.dispatch_due(job, NOW) is None


@pytest.mark.parametrize(
    ("after", "due"),
    [
        (timedelta(seconds=8), timedelta(seconds=8)),
        (timedelta(microseconds=1), timedelta(microseconds=1)),
        (timedelta(0), timedelta(0)),
        (-timedelta(seconds=3), timedelta(0)),
    ],
)
def test_dispatch_due_waits_out_the_backoff(after: timedelta, due: timedelta) -> None:
    job = make_job(dispatch_after=NOW + after)
    assert core.dispatch_due(job, NOW) == due


def test_dispatch_places_the_job() -> None:
    job = job_in("pending", executor=None, attempt=2, dispatch_after=ENDED)
    decision = core.dispatch(job, NEW_EXECUTOR, NOW)
    new = decision.status
    assert new.executor == NEW_EXECUTOR
    assert new.attempt == 3
    assert new.state == "pending"
    assert new.dispatch_after is None
    assert new.updated_at == NOW
    dispatched = condition(new, names.DISPATCHED)
    assert (dispatched.status, dispatched.reason) == ("True", "ExecutorCreated")
    assert NEW_EXECUTOR in dispatched.message
    assert let_go(decision) is None
    assert core.dispatch_due(apply(job, decision), NOW) is None


def test_new_job_dispatches_as_attempt_one() -> None:
    job = apply(make_job(), core.initialise(make_job(), NOW))
    decision = core.dispatch(job, NEW_EXECUTOR, NOW)
    assert (decision.status.attempt, decision.status.executor) == (1, NEW_EXECUTOR)


@pytest.mark.parametrize(
    "job",
    [
        job_in("pending"),  # already has an executor
        job_in("running"),
        job_in("completed"),
        job_in("cancelled"),
        job_in("failed", executor=None),
        job_in("pending", executor=None, dispatch_after=NOW + timedelta(seconds=1)),
        make_job(deletion_timestamp=NOW),
    ],
    ids=[
        "pending-with-executor",
        "running",
        "completed",
        "cancelled",
        "failed",
        "backoff",
        "deleting",
    ],
)
def test_dispatch_not_due_changes_nothing(job: Job) -> None:
    decision = core.dispatch(job, NEW_EXECUTOR, NOW)
    assert decision.status == job.status
    assert events_of(decision) == ()


# --- following the executor -------------------------------------------------------------


def follow(job: Job, phase: str | None, *, name: str = OLD_EXECUTOR, **kw: Any) -> Decision:
    executor = None if phase is None else make_executor(name, job=job, phase=phase, **kw)
    return core.follow_executor(job, executor, name, POLICY, NOW)


def test_follow_running() -> None:
    job = job_in("pending")
    decision = follow(job, "Running")
    assert decision.status.state == "running"
    assert decision.status.started_at == NOW
    assert decision.status.executor == OLD_EXECUTOR
    assert decision.status.updated_at == NOW
    # a second Running report changes nothing
    assert follow(apply(job, decision), "Running").status == decision.status


def test_follow_running_keeps_an_earlier_start() -> None:
    job = job_in("pending", started_at=STARTED)
    assert follow(job, "Running").status.started_at == STARTED


@pytest.mark.parametrize("state", NON_TERMINAL)
def test_follow_succeeded(state: JobState) -> None:
    job = job_in(state)
    decision = follow(job, "Succeeded", result=RESULT, message="done")
    new = decision.status
    assert new.state == "completed"
    assert new.result == RESULT
    assert new.ended_at == NOW
    assert new.started_at == (job.status.started_at or NOW)
    assert new.executor == OLD_EXECUTOR  # the seed's completed job still names its executor
    assert new.history == job.status.history
    assert let_go(decision) is None


@pytest.mark.parametrize("state", NON_TERMINAL)
def test_follow_failed(state: JobState) -> None:
    job = job_in(state)
    decision = follow(job, "Failed", message="out of memory")
    new = decision.status
    assert new.state == "failed"
    assert new.ended_at == NOW
    assert new.result is None
    assert new.message == "out of memory"
    assert reasons(decision) == [("Warning", "ExecutorFailed")]


@pytest.mark.parametrize(
    ("phase", "deleting"),
    [("Terminated", False), (None, False), ("Running", True)],
    ids=["terminated", "deleted", "being-deleted"],
)
def test_follow_lost_executor_orphans_the_job(phase: str | None, deleting: bool) -> None:
    job = job_in("running", auto_reschedules=0)
    executor = (
        None
        if phase is None
        else make_executor(
            OLD_EXECUTOR, job=job, phase=phase, deletion_timestamp=NOW if deleting else None
        )
    )
    decision = core.follow_executor(job, executor, OLD_EXECUTOR, POLICY, NOW)
    assert decision.status.state == "pending"
    assert decision.status.executor is None
    assert decision.status.history[-1].reason == "ExecutorLost"
    assert decision.status.auto_reschedules == 1
    assert reasons(decision) == [("Warning", "ExecutorLost")]


def test_follow_provisioning_changes_nothing() -> None:
    job = job_in("pending")
    assert follow(job, "Provisioning").status == job.status
    assert events_of(follow(job, "Provisioning")) == ()


@pytest.mark.parametrize("phase", [*PHASES, None])
@pytest.mark.parametrize("state", STATES)
def test_phase_of_an_executor_the_job_left_changes_nothing(
    state: JobState, phase: str | None
) -> None:
    job = job_in(state, executor=NEW_EXECUTOR)
    decision = follow(job, phase, name=OLD_EXECUTOR, result=RESULT)
    assert decision.status == job.status
    assert events_of(decision) == ()
    assert let_go(decision) is None


@pytest.mark.parametrize("phase", [*PHASES, None])
@pytest.mark.parametrize("state", TERMINAL)
def test_terminal_job_ignores_its_executor(state: JobState, phase: str | None) -> None:
    job = job_in(state, executor=OLD_EXECUTOR)
    decision = follow(job, phase, result={"other": True})
    assert decision.status == job.status
    assert events_of(decision) == ()
    assert let_go(decision) is None


def test_phase_of_an_executor_of_another_job_changes_nothing() -> None:
    job = job_in("running")
    executor = make_executor(OLD_EXECUTOR, job_uid="someone-else", phase="Succeeded")
    decision = core.follow_executor(job, executor, OLD_EXECUTOR, POLICY, NOW)
    assert decision.status == job.status


def test_job_without_executor_ignores_deletions() -> None:
    job = job_in("pending", executor=None)
    decision = core.follow_executor(job, None, OLD_EXECUTOR, POLICY, NOW)
    assert decision.status == job.status


# --- executor lost -----------------------------------------------------------------------


def test_executor_lost_reschedules_automatically() -> None:
    record = RescheduleRecord(
        request="t-0",
        outcome="rescheduled",
        force=False,
        handled_at=EARLIER,
        previous_state="running",
    )
    job = job_in("running", auto_reschedules=0, reschedule=record)
    decision = core.executor_lost(job, POLICY, NOW, "was terminated")
    new = decision.status
    assert new.state == "pending"
    assert new.executor is None
    assert new.attempt == 2
    assert new.auto_reschedules == 1
    assert new.dispatch_after == NOW + timedelta(seconds=1)
    assert new.reason == "ExecutorLost"
    assert new.history[-1] == HistoryEntry(
        attempt=2,
        executor=OLD_EXECUTOR,
        state="running",
        started_at=STARTED,
        ended_at=NOW,
        reason="ExecutorLost",
    )
    assert new.reschedule == record  # status.reschedule is left alone
    lost = condition(new, names.RESCHEDULED)
    assert (lost.status, lost.reason) == ("True", "ExecutorLost")
    assert let_go(decision) == OLD_EXECUTOR
    assert reasons(decision) == [("Warning", "ExecutorLost")]
    assert OLD_EXECUTOR in events_of(decision)[0].message
    assert core.dispatch_due(apply(job, decision), NOW) == timedelta(seconds=1)


@pytest.mark.parametrize(("used", "delay"), [(0, 1), (1, 2), (2, 4), (5, 32), (6, 60), (9, 60)])
def test_executor_lost_backs_off_exponentially(used: int, delay: int) -> None:
    job = job_in("running", auto_reschedules=used)
    new = core.executor_lost(
        job.model_copy(update={"spec": job.spec.model_copy(update={"max_auto_reschedules": 10})}),
        POLICY,
        NOW,
        "was deleted",
    ).status
    assert new.auto_reschedules == used + 1
    assert new.dispatch_after == NOW + timedelta(seconds=delay)


@pytest.mark.parametrize(("limit", "used"), [(3, 3), (0, 0), (1, 1), (2, 5)])
def test_executor_lost_too_often_fails_the_job(limit: int, used: int) -> None:
    job = job_in("running", auto_reschedules=used, max_auto_reschedules=limit)
    decision = core.executor_lost(job, POLICY, NOW, "was deleted")
    new = decision.status
    assert new.state == "failed"
    assert new.reason == "ExecutorLostTooOften"
    assert new.executor is None
    assert new.ended_at == NOW
    assert new.dispatch_after is None
    assert new.auto_reschedules == used  # never beyond the budget
    assert new.history[-1].reason == "ExecutorLost"
    assert new.history[-1].executor == OLD_EXECUTOR
    assert let_go(decision) == OLD_EXECUTOR
    assert reasons(decision) == [("Warning", "ExecutorLostTooOften")]
    assert core.dispatch_due(apply(job, decision), NOW) is None


def test_max_auto_reschedules_zero_fails_on_the_first_loss() -> None:
    job = make_job(
        max_auto_reschedules=0,
        state="running",
        executor=OLD_EXECUTOR,
        attempt=1,
        started_at=STARTED,
    )
    decision = core.follow_executor(job, None, OLD_EXECUTOR, POLICY, NOW)
    assert decision.status.state == "failed"
    assert decision.status.reason == "ExecutorLostTooOften"


def test_budget_of_three_allows_three_losses_then_fails() -> None:
    job = make_job(state="running", executor="job-executor-0", attempt=1)
    states = []
    for loss in range(1, 5):
        name = f"job-executor-{loss - 1}"
        job = apply(job, core.follow_executor(job, None, name, POLICY, NOW))
        states.append((job.status.state, job.status.auto_reschedules))
        if job.status.state == "pending":
            job = apply(job, core.dispatch(job, f"job-executor-{loss}", NOW + timedelta(hours=1)))
    assert states == [("pending", 1), ("pending", 2), ("pending", 3), ("failed", 3)]


def test_manual_reschedule_resets_the_automatic_budget() -> None:
    job = job_in("running", auto_reschedules=3, max_auto_reschedules=3)
    rescheduled = apply(job, core.handle_requests(requesting(job, "t-1"), NOW))
    assert rescheduled.status.auto_reschedules == 0
    running = apply(rescheduled, core.dispatch(rescheduled, NEW_EXECUTOR, NOW))
    lost = core.follow_executor(running, None, NEW_EXECUTOR, POLICY, NOW).status
    assert (lost.state, lost.auto_reschedules) == ("pending", 1)


@pytest.mark.parametrize(
    "job",
    [job_in("completed"), job_in("failed"), job_in("cancelled"), job_in("pending", executor=None)],
    ids=["completed", "failed", "cancelled", "no-executor"],
)
def test_executor_lost_ignores_jobs_without_a_live_executor(job: Job) -> None:
    decision = core.executor_lost(job, POLICY, NOW, "was deleted")
    assert decision.status == job.status
    assert let_go(decision) is None
    assert events_of(decision) == ()


# --- Policy.backoff ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("losses", "seconds"),
    [(0, 1), (1, 1), (2, 2), (3, 4), (4, 8), (6, 32), (7, 60), (8, 60), (48, 60), (10**6, 60)],
)
def test_backoff_is_exponential_and_capped(losses: int, seconds: int) -> None:
    assert Policy().backoff(losses) == timedelta(seconds=seconds)


def test_backoff_with_other_settings() -> None:
    policy = Policy(backoff_base=timedelta(milliseconds=500), backoff_cap=timedelta(seconds=3))
    delays = [policy.backoff(n).total_seconds() for n in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert Policy(backoff_base=timedelta(0)).backoff(1000) == timedelta(0)


def test_large_budget_losses_do_not_overflow() -> None:
    """maxAutoReschedules has no upper bound: a long run of losses must still back off."""
    job = job_in("running", auto_reschedules=200, max_auto_reschedules=1000)
    new = core.executor_lost(job, POLICY, NOW, "was deleted").status
    assert new.dispatch_after == NOW + timedelta(seconds=60)


# --- the executor manifest -----------------------------------------------------------------


def test_executor_manifest() -> None:
    job = job_in("pending", executor=None, attempt=2, executor_class="gpu")
    name = executors.new_executor_name("98e1f48e-bf54-4f11-bbd1-73c445120266")
    assert name == "job-executor-98e1f48e-bf54-4f11-bbd1-73c445120266"
    assert executors.executor_manifest(job, name) == {
        "apiVersion": "job-operator.dev/v1",
        "kind": "ExecutorCluster",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {
                "job-operator.dev/job-name": "nightly",
                "job-operator.dev/job-uid": JOB_UID,
            },
            "ownerReferences": [
                {
                    "apiVersion": "job-operator.dev/v1",
                    "kind": "Job",
                    "name": "nightly",
                    "uid": JOB_UID,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "jobRef": {"name": "nightly", "uid": JOB_UID},
            "attempt": 3,
            "executorClass": "gpu",
        },
    }


def test_executor_manifest_is_the_next_attempt_of_a_fresh_job() -> None:
    manifest = executors.executor_manifest(make_job(), NEW_EXECUTOR)
    assert manifest["spec"]["attempt"] == 1
    assert manifest["spec"]["executorClass"] == "default"


def test_executor_manifest_truncates_a_long_job_name_in_its_label() -> None:
    long_name = "a" * 62 + "-" + "b" * 40
    manifest = executors.executor_manifest(make_job(name=long_name), NEW_EXECUTOR)
    assert manifest["metadata"]["labels"][names.JOB_NAME_LABEL] == "a" * 62
    assert manifest["spec"]["jobRef"]["name"] == long_name
    assert manifest["metadata"]["ownerReferences"][0]["name"] == long_name


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("nightly", "nightly"),
        ("x" * 63, "x" * 63),
        ("x" * 64, "x" * 63),
        ("x" * 61 + ".y", "x" * 61 + ".y"),
        ("x" * 62 + ".y", "x" * 62),
        ("x" * 60 + "-_.z", "x" * 60),
        ("", ""),
    ],
)
def test_label_value(text: str, value: str) -> None:
    assert executors.label_value(text) == value
    assert len(executors.label_value(text)) <= 63


# --- conditions and small helpers ----------------------------------------------------------


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    status = JobStatus(conditions=[DISPATCHED_TRUE])
    conditions = core.set_condition(
        status, names.DISPATCHED, True, "ExecutorCreated", "attempt 3", NOW, 4
    )
    [dispatched] = conditions
    assert dispatched.last_transition_time == EARLIER
    assert (dispatched.message, dispatched.observed_generation) == ("attempt 3", 4)


def test_set_condition_moves_transition_time_when_status_changes() -> None:
    status = JobStatus(conditions=[DISPATCHED_TRUE])
    [dispatched] = core.set_condition(status, names.DISPATCHED, False, "Pending", "", NOW, 1)
    assert (dispatched.status, dispatched.reason) == ("False", "Pending")
    assert dispatched.last_transition_time == NOW


def test_set_condition_adds_a_new_type_and_keeps_the_others() -> None:
    status = JobStatus(conditions=[DISPATCHED_TRUE])
    conditions = core.set_condition(status, names.RESCHEDULED, True, "Forced", "m", NOW, None)
    assert conditions[0] == DISPATCHED_TRUE
    assert [(c.type, c.status, c.last_transition_time) for c in conditions[1:]] == [
        (names.RESCHEDULED, "True", NOW)
    ]


def test_initialise_a_new_job() -> None:
    job = make_job(generation=3)
    decision = core.initialise(job, NOW)
    assert decision.status.state == "pending"
    assert decision.status.updated_at == NOW
    assert decision.status.observed_generation == 3
    assert decision.status != job.status
    initialised = apply(job, decision)
    assert core.initialise(initialised, NOW).status == initialised.status


def test_initialise_leaves_a_known_job_alone() -> None:
    job = job_in("running")
    assert core.initialise(job, NOW).status == job.status


def test_token_digest() -> None:
    assert core.token_digest("t-1") == digest("t-1")


# --- an attempt is recorded in history once ------------------------------------------


def test_cancel_records_the_attempt_with_its_executor() -> None:
    job = annotated(job_in("running"), {CANCEL: "c-1"})
    new = core.handle_requests(job, NOW).status
    entry = new.history[-1]
    assert (entry.attempt, entry.executor, entry.state, entry.reason) == (
        job.status.attempt,
        OLD_EXECUTOR,
        "cancelled",
        "Cancelled",
    )


@pytest.mark.parametrize("ended", ["cancel", "lost"])
def test_forced_reschedule_after_the_attempt_ended_adds_no_second_entry(ended: str) -> None:
    job = job_in("running", max_auto_reschedules=0)
    if ended == "cancel":
        job = apply(job, core.handle_requests(annotated(job, {CANCEL: "c-1"}), NOW))
    else:
        job = apply(job, core.executor_lost(job, POLICY, NOW, "was deleted"))
    assert job.status.terminal and job.status.executor is None
    recorded = list(job.status.history)
    forced = annotated(job, {RESCHEDULE: "f", FORCE: "f"})
    new = core.handle_requests(forced, NOW).status
    assert new.state == "pending"
    assert new.history == recorded  # the ended attempt is already there, with its executor
    assert [h.attempt for h in new.history].count(job.status.attempt) == 1
