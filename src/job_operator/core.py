"""The state machine of a Job: pure functions over the models, no I/O.

`plan(job, clusters, now, policy)` is the whole effect of one reconcile, from the
job and its ExecutorClusters as they are: the status to write (one compare-and-swap
on the job's resourceVersion), the cluster to create, the clusters to delete, the
events and the outcomes for metrics. The controller (controller.py) only carries a
plan out. Every rule of docs/reference.md and README's reschedule, orphan and cancel
sections lives here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from job_operator import names
from job_operator.executors import executor_manifest, new_executor_name
from job_operator.models import (
    HISTORY_LIMIT,
    CancelRecord,
    Condition,
    ExecutorCluster,
    HistoryEntry,
    HistoryReason,
    Job,
    JobStatus,
    RejectedRequest,
    RescheduleRecord,
)
from job_operator.requests import Request, invalid_reason, pending_request

# A handled request's identity (its annotation and token digest) names its events; the
# CLI, the HTTP API and the tests compare tokens by it, from here.
from job_operator.requests import request_key as request_key
from job_operator.requests import token_digest as token_digest

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the Job.

    `key` names what the event is about (a request's token, a lost executor): the
    event's name is derived from it, so posting the same event twice is a no-op.
    """

    type: EventType
    reason: names.EventReason
    message: str
    key: str


@dataclass(frozen=True)
class Decision:
    """What a rule does to a job's status: `before` becomes `status`. Its events follow
    from the two (`events(status, before=before)`), never made on the side."""

    before: JobStatus
    status: JobStatus


OutcomeKind = Literal[
    "reschedule", "cancel", "auto_reschedule", "dispatch", "orphan", "dangling_deleted"
]


@dataclass(frozen=True)
class Outcome:
    """Something a plan does, as the metrics count it: a request's outcome
    (`reschedule`/`cancel`: rescheduled, cancelled, skipped_terminal, invalid), an
    automatic reschedule (rescheduled, failed), a dispatch, an orphan found, a dangling
    cluster deleted."""

    kind: OutcomeKind
    value: str = ""


@dataclass(frozen=True)
class Plan:
    """Everything one reconcile of a job does, decided from the job and its clusters.

    Carried out in this order: `create` the cluster (before the status names it),
    compare-and-swap `status` (None: unchanged), post `events`, `delete` clusters;
    then look again after `requeue_after` (a backoff), if set.
    """

    status: JobStatus | None = None
    create: dict[str, Any] | None = None
    delete: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()
    outcomes: tuple[Outcome, ...] = ()
    requeue_after: timedelta | None = None


@dataclass(frozen=True)
class Policy:
    """Operator settings the rules depend on."""

    backoff_base: timedelta = timedelta(seconds=1)
    backoff_cap: timedelta = timedelta(seconds=60)

    def backoff(self, losses: int) -> timedelta:
        """Delay before redispatch after the `losses`-th automatic reschedule (1-based)."""
        delay = self.backoff_base
        # Double step by step and stop at the cap: `base * 2 ** (losses - 1)` overflows
        # timedelta once losses reaches about 48 (maxAutoReschedules has no upper bound).
        for _ in range(max(losses - 1, 0)):
            if delay >= self.backoff_cap or not delay:
                break
            delay *= 2
        return min(delay, self.backoff_cap)


def with_request(job: Job, annotation: str, token: str, *, force: bool = False) -> Job:
    """`job` as it would be with request `token` written to `annotation` (and forced):
    what `plan` then does answers "what would this request do?" without writing it."""
    annotations = {**job.metadata.annotations, annotation: token}
    if force:
        annotations[names.RESCHEDULE_FORCE_ANNOTATION] = token
    metadata = job.metadata.model_copy(update={"annotations": annotations})
    return job.model_copy(update={"metadata": metadata})


# --- status helpers ---------------------------------------------------------------------


def set_condition(
    status: JobStatus,
    type_: names.ConditionType,
    value: bool,
    reason: names.ConditionReason,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Conditions with `type_` set; lastTransitionTime moves only when the value changes."""
    new_status: Literal["True", "False"] = "True" if value else "False"
    old = status.condition(type_)
    transition = old.last_transition_time if old and old.status == new_status else now
    condition = Condition(
        type=type_,
        status=new_status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    return [*(c for c in status.conditions if c.type != type_), condition]


def _history_entry(status: JobStatus, reason: HistoryReason, now: datetime) -> HistoryEntry:
    return HistoryEntry(
        attempt=status.attempt,
        executor=status.executor,
        state=status.state,
        started_at=status.started_at,
        ended_at=status.ended_at or now,
        reason=reason,
        result=status.result,
    )


def _appended(history: list[HistoryEntry], entry: HistoryEntry) -> list[HistoryEntry]:
    return [*history, entry][-HISTORY_LIMIT:]


def _requeued(job: Job, reason: HistoryReason, now: datetime) -> JobStatus:
    """The job back on the queue: pending, no executor, the attempt moved into history."""
    status = job.status
    history = status.history
    recorded = bool(history) and history[-1].attempt == status.attempt
    if (status.executor is not None or status.terminal) and not recorded:
        history = _appended(history, _history_entry(status, reason, now))
    return status.model_copy(
        update={
            "state": "pending",
            "executor": None,
            "result": None,
            "reason": reason,
            "message": None,
            "started_at": None,
            "ended_at": None,
            "updated_at": now,
            "history": history,
            "observed_generation": job.metadata.generation,
            "conditions": set_condition(
                status,
                names.DISPATCHED,
                False,
                "Pending",
                "waiting for an ExecutorCluster",
                now,
                job.metadata.generation,
            ),
        }
    )


# --- the rules --------------------------------------------------------------------------


def reject(
    job: Job, request: Request, reason: names.ConditionReason, message: str, now: datetime
) -> Decision:
    """A request that cannot be honoured: recorded so it is not retried, no state change."""
    status = job.status
    condition_type: names.ConditionType = (
        names.RESCHEDULE_REQUEST_VALID
        if request.annotation == names.RESCHEDULE_ANNOTATION
        else names.CANCEL_REQUEST_VALID
    )
    record = RejectedRequest(
        annotation=request.annotation,
        token_digest=request.digest,
        reason=reason,
        message=message,
        rejected_at=now,
    )
    new = status.model_copy(
        update={
            "rejected_requests": [
                *(r for r in status.rejected_requests if r.annotation != request.annotation),
                record,
            ],
            "conditions": set_condition(
                status, condition_type, False, reason, message, now, job.metadata.generation
            ),
        }
    )
    return Decision(status, new)


def reschedule(job: Job, request: Request, now: datetime) -> Decision:
    """A manual reschedule: the seed's operation, by the contract's token and force rules."""
    status = job.status
    record = RescheduleRecord(
        request=request.token,
        outcome="rescheduled",
        force=request.force,
        handled_at=now,
        previous_state=status.state,
        previous_executor=status.executor,
        requested_by=request.requested_by,
    )
    generation = job.metadata.generation
    if status.terminal and not request.force:
        skipped = record.model_copy(update={"outcome": "skipped_terminal"})
        message = f"job is {status.state}; set {names.RESCHEDULE_FORCE_ANNOTATION} to force"
        conditions = set_condition(
            status, names.RESCHEDULED, False, "SkippedTerminal", message, now, generation
        )
        new = status.model_copy(update={"reschedule": skipped, "conditions": conditions})
        new = _valid(new, now, generation)
        return Decision(status, new)
    reason: names.ConditionReason = "Forced" if request.force else "ManualRequest"
    requeued = _requeued(job, "Rescheduled", now)
    message = (
        f"rescheduled from {status.state}"
        + (f" on {status.executor}" if status.executor else "")
        + (" (forced)" if request.force else "")
    )
    new = requeued.model_copy(
        update={
            "reschedule": record,
            "auto_reschedules": 0,
            "dispatch_after": None,
            "conditions": set_condition(
                requeued, names.RESCHEDULED, True, reason, message, now, generation
            ),
        }
    )
    return Decision(status, _valid(new, now, generation))


def _valid(status: JobStatus, now: datetime, generation: int | None) -> JobStatus:
    conditions = set_condition(
        status,
        names.RESCHEDULE_REQUEST_VALID,
        True,
        "Accepted",
        "the last reschedule request was handled",
        now,
        generation,
    )
    return status.model_copy(update={"conditions": conditions})


def cancel(job: Job, request: Request, now: datetime) -> Decision:
    """A cancel: a non-terminal job becomes cancelled and loses its executor."""
    status = job.status
    record = CancelRecord(
        request=request.token,
        outcome="cancelled",
        handled_at=now,
        previous_state=status.state,
    )
    if status.terminal:
        skipped = record.model_copy(update={"outcome": "skipped_terminal"})
        new = _cancel_valid(
            status.model_copy(update={"cancel": skipped}), now, job.metadata.generation
        )
        return Decision(status, new)
    history = status.history
    if status.executor is not None:  # the attempt ends here, and its executor goes
        ended = status.model_copy(update={"state": "cancelled"})
        history = _appended(history, _history_entry(ended, "Cancelled", now))
    new = status.model_copy(
        update={
            "history": history,
            "state": "cancelled",
            "executor": None,
            "reason": "Cancelled",
            "message": None,
            "ended_at": now,
            "updated_at": now,
            "cancel": record,
            "dispatch_after": None,
            "observed_generation": job.metadata.generation,
            "conditions": set_condition(
                status,
                names.DISPATCHED,
                False,
                "Cancelled",
                "job cancelled",
                now,
                job.metadata.generation,
            ),
        }
    )
    return Decision(status, _cancel_valid(new, now, job.metadata.generation))


def _cancel_valid(status: JobStatus, now: datetime, generation: int | None) -> JobStatus:
    """A handled cancel clears an earlier rejection (CancelRequestValid=False), if any."""
    if status.condition(names.CANCEL_REQUEST_VALID) is None:
        return status
    conditions = set_condition(
        status,
        names.CANCEL_REQUEST_VALID,
        True,
        "Accepted",
        "the last cancel request was handled",
        now,
        generation,
    )
    return status.model_copy(update={"conditions": conditions})


def handle_requests(job: Job, now: datetime) -> Decision:
    """Every unhandled request annotation, cancel first, as one decision."""
    current = job
    for annotation, rule in (
        (names.CANCEL_ANNOTATION, cancel),
        (names.RESCHEDULE_ANNOTATION, reschedule),
    ):
        request = pending_request(current, annotation)
        if request is None:
            continue
        invalid = invalid_reason(request)
        step = reject(current, request, *invalid, now) if invalid else rule(current, request, now)
        current = current.model_copy(update={"status": step.status})
    return Decision(job.status, current.status)


def dispatch_due(job: Job, now: datetime) -> timedelta | None:
    """None if the job needs no dispatch; else how long to wait (zero: dispatch now)."""
    status = job.status
    if status.state != "pending" or status.executor is not None:
        return None
    if job.metadata.deletion_timestamp is not None:
        return None
    if status.dispatch_after is not None:
        remaining = status.dispatch_after - now
        if remaining > timedelta(0):
            return remaining
    return timedelta(0)


def dispatch(job: Job, executor: str, now: datetime) -> Decision:
    """Place a pending job on a fresh ExecutorCluster (already created under `executor`)."""
    status = job.status
    if dispatch_due(job, now) != timedelta(0):
        return Decision(status, status)
    attempt = status.attempt + 1
    new = status.model_copy(
        update={
            "executor": executor,
            "attempt": attempt,
            "dispatch_after": None,
            "reason": None,
            "updated_at": now,
            "observed_generation": job.metadata.generation,
            "conditions": set_condition(
                status,
                names.DISPATCHED,
                True,
                "ExecutorCreated",
                f"attempt {attempt} on {executor}",
                now,
                job.metadata.generation,
            ),
        }
    )
    return Decision(status, new)


def executor_lost(job: Job, policy: Policy, now: datetime, why: str) -> Decision:
    """The job's executor is gone: reschedule automatically, within the job's budget."""
    status = job.status
    if status.terminal or status.executor is None:
        return Decision(status, status)
    lost = status.executor
    generation = job.metadata.generation
    if status.auto_reschedules >= job.spec.max_auto_reschedules:
        history = _appended(status.history, _history_entry(status, "ExecutorLost", now))
        message = (
            f"{lost} {why}; {status.auto_reschedules} automatic reschedules "
            f"already used (maxAutoReschedules={job.spec.max_auto_reschedules})"
        )
        new = status.model_copy(
            update={
                "state": "failed",
                "executor": None,
                "reason": "ExecutorLostTooOften",
                "message": message,
                "ended_at": now,
                "updated_at": now,
                "history": history,
                "result": None,
                "observed_generation": generation,
                "conditions": set_condition(
                    status,
                    names.DISPATCHED,
                    False,
                    "ExecutorLostTooOften",
                    message,
                    now,
                    generation,
                ),
            }
        )
        return Decision(status, new)
    losses = status.auto_reschedules + 1
    delay = policy.backoff(losses)
    message = (
        f"{lost} {why}; automatic reschedule {losses} of "
        f"{job.spec.max_auto_reschedules}, redispatch in {delay.total_seconds():g}s"
    )
    requeued = _requeued(job, "ExecutorLost", now)
    new = requeued.model_copy(
        update={
            "auto_reschedules": losses,
            "dispatch_after": now + delay,
            "message": message,
            "conditions": set_condition(
                requeued, names.RESCHEDULED, True, "ExecutorLost", message, now, generation
            ),
        }
    )
    return Decision(status, new)


def follow_executor(
    job: Job,
    executor: ExecutorCluster | None,
    name: str,
    policy: Policy,
    now: datetime,
) -> Decision:
    """The job follows its current executor's phase; `executor` None means it is deleted.

    A phase from an ExecutorCluster the job has already left never changes the job.
    """
    status = job.status
    if status.executor != name or status.terminal:
        return Decision(status, status)
    if executor is None or executor.metadata.deletion_timestamp is not None:
        return executor_lost(job, policy, now, "was deleted")
    if executor.spec.job_ref.uid != job.metadata.uid:
        return Decision(status, status)
    phase = executor.status.phase
    generation = job.metadata.generation
    if phase == "Terminated":
        return executor_lost(job, policy, now, "was terminated")
    if phase == "Running" and status.state != "running":
        return Decision(
            status,
            status.model_copy(
                update={
                    "state": "running",
                    "started_at": status.started_at or now,
                    "updated_at": now,
                    "observed_generation": generation,
                }
            ),
        )
    if phase == "Succeeded":
        return Decision(
            status,
            status.model_copy(
                update={
                    "state": "completed",
                    "result": executor.status.result or {},
                    "reason": "Succeeded",
                    "message": executor.status.message,
                    "started_at": status.started_at or now,
                    "ended_at": now,
                    "updated_at": now,
                    "observed_generation": generation,
                }
            ),
        )
    if phase == "Failed":
        return Decision(
            status,
            status.model_copy(
                update={
                    "state": "failed",
                    "reason": "ExecutorFailed",
                    "message": executor.status.message or f"{name} failed",
                    "started_at": status.started_at or now,
                    "ended_at": now,
                    "updated_at": now,
                    "observed_generation": generation,
                }
            ),
        )
    return Decision(status, status)


def initialise(job: Job, now: datetime) -> Decision:
    """A new job (no status yet) starts pending."""
    if job.status.updated_at is not None:
        return Decision(job.status, job.status)
    return Decision(
        job.status,
        job.status.model_copy(
            update={
                "state": "pending",
                "updated_at": now,
                "observed_generation": job.metadata.generation,
            }
        ),
    )


def events(
    status: JobStatus, *, before: JobStatus | None = None, since: datetime | None = None
) -> tuple[Event, ...]:
    """The events of what `status` records: the one place events are made.

    With `before` (a plan), the events of what changed since that status: requests
    handled, an executor lost or failed. Without it (crash repair), the events of the
    requests handled since `since`: a crash between a status write and its event leaves
    them unposted, and events are keyed, so those already posted stay single.
    """

    def recorded(new: bool, handled_at: datetime) -> bool:
        return new if before is not None else since is None or handled_at >= since

    made: list[Event] = []
    old = before or JobStatus()
    cancelled = status.cancel
    if cancelled is not None and recorded(cancelled != old.cancel, cancelled.handled_at):
        key = request_key(names.CANCEL_ANNOTATION, token_digest(cancelled.request))
        if cancelled.outcome == "cancelled":
            message = f"cancelled; the job was {cancelled.previous_state}"
            made.append(Event("Normal", "Cancelled", message, key))
        else:
            message = f"job is already {cancelled.previous_state}; cancel ignored"
            made.append(Event("Normal", "CancelSkipped", message, key))
    record = status.reschedule
    if record is not None and recorded(record != old.reschedule, record.handled_at):
        key = request_key(names.RESCHEDULE_ANNOTATION, token_digest(record.request))
        if record.outcome == "rescheduled":
            message = (
                f"rescheduled from {record.previous_state}"
                + (f" on {record.previous_executor}" if record.previous_executor else "")
                + (" (forced)" if record.force else "")
            )
            made.append(Event("Normal", "Rescheduled", message, key))
        else:
            force = names.RESCHEDULE_FORCE_ANNOTATION
            message = f"job is {record.previous_state}; set {force} to force"
            made.append(Event("Normal", "RescheduleSkipped", message, key))
    for rejected in status.rejected_requests:
        if recorded(rejected not in old.rejected_requests, rejected.rejected_at):
            key = request_key(rejected.annotation, rejected.token_digest)
            if rejected.annotation == names.RESCHEDULE_ANNOTATION:
                made.append(Event("Warning", "InvalidRescheduleRequest", rejected.message, key))
            else:
                made.append(Event("Warning", "InvalidCancelRequest", rejected.message, key))
    if before is None or before.terminal or before.executor is None:
        return tuple(made)
    left = before.executor
    if status.reason == "ExecutorLostTooOften" and status.executor != left:
        made.append(Event("Warning", "ExecutorLostTooOften", status.message or "", f"lost:{left}"))
    elif status.auto_reschedules > before.auto_reschedules:
        made.append(Event("Warning", "ExecutorLost", status.message or "", f"lost:{left}"))
    elif status.reason == "ExecutorFailed" and status.state == "failed":
        made.append(Event("Warning", "ExecutorFailed", status.message or "", f"failed:{left}"))
    return tuple(made)


def plan(
    job: Job,
    clusters: Sequence[ExecutorCluster],
    now: datetime,
    policy: Policy,
    *,
    fresh_executor: str | None = None,
) -> Plan:
    """Everything a reconcile does to `job`, given the ExecutorClusters that name it
    (`spec.jobRef.name`) as they are now. Pure: the controller carries the plan out.

    In order: a first status; the job follows the cluster its status names (its phase,
    or its loss when it is gone, deleting or `Terminated`); its requests, cancel first;
    a dispatch if that leaves it waiting and no backoff holds it: onto the cluster of its
    next attempt if one exists (made before a crash or a refused write), else onto a new
    one (`fresh_executor`, a fresh `job-executor-<uuid4>` by default). Every cluster the
    job does not name afterwards is deleted, but for its next attempt's while it waits
    for a dispatch. A cluster the job has left never changes it.
    """
    uid = job.metadata.uid
    mine = [c for c in clusters if c.spec.job_ref.uid == uid]
    before = job.status
    current = job.model_copy(update={"status": initialise(job, now).status})
    outcomes: list[Outcome] = []
    following = current.status.executor
    if following is not None and not current.status.terminal:
        cluster = next((c for c in mine if c.metadata.name == following), None)
        followed = follow_executor(current, cluster, following, policy, now).status
        if followed.executor != following:
            outcomes.append(Outcome("orphan"))
        current = current.model_copy(update={"status": followed})
    followed = current.status
    current = current.model_copy(update={"status": handle_requests(current, now).status})
    create: dict[str, Any] | None = None
    requeue_after: timedelta | None = None
    due = dispatch_due(current, now)
    if due == timedelta(0):
        attempt = current.status.attempt + 1
        adopted = next(
            (
                c
                for c in mine
                if c.spec.attempt == attempt and c.metadata.deletion_timestamp is None
            ),
            None,
        )
        if adopted is not None:
            name = adopted.metadata.name
        else:
            name = fresh_executor or new_executor_name(str(uuid.uuid4()))
            create = executor_manifest(current, name)
        current = current.model_copy(update={"status": dispatch(current, name, now).status})
    elif due is not None:
        requeue_after = due
    after = current.status
    waiting = dispatch_due(current, now) is not None
    delete = tuple(
        c.metadata.name
        for c in clusters
        if c.metadata.deletion_timestamp is None
        and c.metadata.name != after.executor
        and not (waiting and c.spec.job_ref.uid == uid and c.spec.attempt == after.attempt + 1)
    )
    outcomes.extend(_outcomes(before, after))
    outcomes.extend(Outcome("dangling_deleted") for name in delete if name != before.executor)
    return Plan(
        status=after if after != before else None,
        create=create,
        delete=delete,
        events=events(followed, before=before) + events(after, before=followed),
        outcomes=tuple(outcomes),
        requeue_after=requeue_after,
    )


def plan_gone(clusters: Sequence[ExecutorCluster]) -> Plan:
    """The reconcile of a job that is gone (deleted, or never seen): every cluster that
    names it and is not already being deleted is deleted, each a dangling one."""
    delete = tuple(c.metadata.name for c in clusters if not c.metadata.deletion_timestamp)
    return Plan(delete=delete, outcomes=tuple(Outcome("dangling_deleted") for _ in delete))


def _outcomes(before: JobStatus, after: JobStatus) -> list[Outcome]:
    """What a status change did, as the metrics count it."""
    found: list[Outcome] = []
    if after.reschedule is not None and after.reschedule != before.reschedule:
        found.append(Outcome("reschedule", after.reschedule.outcome))
    if after.cancel is not None and after.cancel != before.cancel:
        found.append(Outcome("cancel", after.cancel.outcome))
    for rejected in after.rejected_requests:
        if rejected not in before.rejected_requests:
            kind: OutcomeKind = (
                "reschedule" if rejected.annotation == names.RESCHEDULE_ANNOTATION else "cancel"
            )
            found.append(Outcome(kind, "invalid"))
    if after.auto_reschedules > before.auto_reschedules:
        found.append(Outcome("auto_reschedule", "rescheduled"))
    if after.reason == "ExecutorLostTooOften" and before.reason != after.reason:
        found.append(Outcome("auto_reschedule", "failed"))
    if after.attempt > before.attempt:
        found.append(Outcome("dispatch"))
    return found


def event_name(job: Job, key: str) -> str:
    """A stable name for the event about `key` (`Event.key`) of a job: the same event
    about the same job, the same name."""
    digest = hashlib.sha256(f"{job.metadata.uid}/{key}".encode()).hexdigest()[:16]
    return f"{job.metadata.name[:200]}.{digest}"
