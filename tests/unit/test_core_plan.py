"""Unit tests of `core.plan`: everything a reconcile does, from the job and its clusters."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from job_operator import core, executors, names
from job_operator.core import Outcome, OutcomeKind, Plan, Policy
from job_operator.models import ExecutorCluster, Job, JobState
from tests.unit.factories import JOB_UID, NOW, make_executor, make_job, with_status

RESCHEDULE = names.RESCHEDULE_ANNOTATION
CANCEL = names.CANCEL_ANNOTATION
OLD = "job-executor-11111111-1111-4111-8111-111111111111"
CURRENT = "job-executor-22222222-2222-4222-8222-222222222222"
FRESH = "job-executor-33333333-3333-4333-8333-333333333333"
POLICY = Policy()
STARTED = NOW - timedelta(minutes=10)


def job_on(state: JobState = "running", **status: Any) -> Job:
    """A job dispatched twice, its second attempt on CURRENT."""
    fields: dict[str, Any] = {
        "state": state,
        "executor": CURRENT,
        "attempt": 2,
        "started_at": STARTED if state != "pending" else None,
        "updated_at": STARTED,
    }
    if state in ("completed", "failed"):
        fields.update(ended_at=STARTED, result={"rows": 1} if state == "completed" else None)
    if state == "cancelled":
        fields.update(executor=None, ended_at=STARTED)
    fields.update(status)
    return make_job(**fields)


def cluster(
    name: str = CURRENT, *, attempt: int = 2, phase: str | None = "Running", **kw: Any
) -> ExecutorCluster:
    return make_executor(name, attempt=attempt, phase=phase, **kw)


def plan(job: Job, *clusters: ExecutorCluster, policy: Policy = POLICY) -> Plan:
    return core.plan(job, list(clusters), NOW, policy, fresh_executor=FRESH)


def writes_nothing(made: Plan) -> bool:
    """Nothing to write, create or delete."""
    return made.status is None and made.create is None and not made.delete


def outcome_of(made: Plan, kind: OutcomeKind) -> str | None:
    """The value of the plan's `kind` outcome (e.g. "rescheduled"), if it has one."""
    return next((o.value for o in made.outcomes if o.kind == kind), None)


def carried_out(job: Job, made: Plan, clusters: list[ExecutorCluster]) -> tuple[Job, list[Any]]:
    """The world after `made`: the status written, the cluster created, deletions done."""
    if made.status is not None:
        job = job.model_copy(update={"status": made.status})
    kept = [c for c in clusters if c.metadata.name not in made.delete]
    if made.create is not None:
        kept.append(ExecutorCluster.model_validate(made.create))
    return job, kept


# --- a new job ---------------------------------------------------------------------


def test_a_new_job_is_dispatched_onto_a_fresh_cluster_in_one_plan() -> None:
    job = make_job()
    made = plan(job)
    assert made.status is not None
    assert (made.status.state, made.status.executor, made.status.attempt) == ("pending", FRESH, 1)
    assert made.create == executors.executor_manifest(job, FRESH)
    assert made.create["spec"]["attempt"] == 1
    assert made.delete == ()
    assert made.events == ()
    assert made.outcomes == (Outcome("dispatch"),)


def test_a_cluster_made_before_a_crash_is_adopted_not_made_again() -> None:
    made = plan(make_job(), cluster(OLD, attempt=1, phase=None))
    assert made.create is None
    assert made.status is not None and made.status.executor == OLD
    assert made.delete == ()


def test_a_deleting_cluster_of_the_next_attempt_is_not_adopted() -> None:
    made = plan(make_job(), cluster(OLD, attempt=1, deletion_timestamp=STARTED))
    assert made.create is not None and made.status is not None
    assert made.status.executor == FRESH
    assert made.delete == ()  # already on its way


def test_without_a_given_name_a_fresh_uuid4_name_is_made() -> None:
    made = core.plan(make_job(), [], NOW, POLICY)
    assert made.create is not None and made.status is not None
    name = made.create["metadata"]["name"]
    assert name == made.status.executor and name.startswith(names.EXECUTOR_NAME_PREFIX)
    assert name != core.plan(make_job(), [], NOW, POLICY).create["metadata"]["name"]  # type: ignore[index]


# --- following the current cluster -------------------------------------------------


@pytest.mark.parametrize("phase", [None, "Provisioning"])
def test_a_job_whose_cluster_is_not_running_yet_needs_nothing(phase: str | None) -> None:
    made = plan(job_on("pending"), cluster(phase=phase))
    assert made == Plan()
    assert writes_nothing(made)


def test_a_running_job_on_its_running_cluster_needs_nothing() -> None:
    assert writes_nothing(plan(job_on("running"), cluster()))


@pytest.mark.parametrize(
    ("phase", "state", "event"),
    [
        ("Running", "running", None),
        ("Succeeded", "completed", None),
        ("Failed", "failed", "ExecutorFailed"),
    ],
)
def test_the_job_follows_its_cluster(phase: str, state: str, event: str | None) -> None:
    made = plan(job_on("pending"), cluster(phase=phase, result={"rows": 2}, message="boom"))
    assert made.status is not None and made.status.state == state
    assert made.status.executor == CURRENT
    assert made.create is None and made.delete == ()
    assert [e.reason for e in made.events] == ([event] if event else [])
    if event:
        assert made.events[0].type == "Warning" and made.events[0].message == "boom"


@pytest.mark.parametrize(
    ("present", "why"),
    [
        (False, "was deleted"),
        (True, "was terminated"),  # Terminated, still there: deleted by the plan
    ],
)
def test_a_lost_cluster_reschedules_the_job_with_a_backoff(present: bool, why: str) -> None:
    clusters = [cluster(phase="Terminated")] if present else []
    made = plan(job_on("running"), *clusters)
    status = made.status
    assert status is not None
    assert (status.state, status.executor, status.auto_reschedules) == ("pending", None, 1)
    assert why in (status.message or "")
    assert made.requeue_after == POLICY.backoff(1)
    assert made.create is None
    assert made.delete == ((CURRENT,) if present else ())
    assert [(e.type, e.reason, e.key) for e in made.events] == [
        ("Warning", "ExecutorLost", f"lost:{CURRENT}")
    ]
    assert set(made.outcomes) == {Outcome("orphan"), Outcome("auto_reschedule", "rescheduled")}


def test_a_deleting_cluster_counts_as_lost() -> None:
    made = plan(job_on("running"), cluster(deletion_timestamp=STARTED))
    assert made.status is not None and made.status.executor is None
    assert made.delete == ()


def test_without_backoff_a_lost_job_is_redispatched_in_the_same_plan() -> None:
    made = plan(job_on("running"), policy=Policy(backoff_base=timedelta(0)))
    assert made.status is not None
    assert (made.status.executor, made.status.attempt) == (FRESH, 3)
    assert made.create is not None and made.requeue_after is None


def test_a_loss_past_the_budget_fails_the_job() -> None:
    made = plan(job_on("running", auto_reschedules=3))
    assert made.status is not None
    assert (made.status.state, made.status.reason) == ("failed", "ExecutorLostTooOften")
    assert [e.reason for e in made.events] == ["ExecutorLostTooOften"]
    assert Outcome("auto_reschedule", "failed") in made.outcomes


def test_a_cluster_of_another_job_by_the_same_name_is_not_followed_but_deleted() -> None:
    stranger = cluster(job_uid="another-uid", phase="Succeeded")
    made = plan(job_on("running"), stranger)
    assert made.status is not None and made.status.executor is None  # its own is gone
    assert made.delete == (CURRENT,)


# --- clusters the job has left -----------------------------------------------------


@pytest.mark.parametrize("phase", [None, "Running", "Succeeded", "Failed", "Terminated"])
def test_a_cluster_the_job_has_left_never_changes_it_and_is_deleted(phase: str | None) -> None:
    made = plan(job_on("running"), cluster(), cluster(OLD, attempt=1, phase=phase))
    assert made.status is None
    assert made.delete == (OLD,)
    assert made.outcomes == (Outcome("dangling_deleted"),)
    assert made.events == ()


def test_a_gone_jobs_clusters_are_all_deleted_but_those_being_deleted() -> None:
    deleting = cluster(OLD, attempt=1, deletion_timestamp=NOW)
    made = core.plan_gone([cluster(), deleting])
    assert made == Plan(delete=(CURRENT,), outcomes=(Outcome("dangling_deleted"),))
    assert writes_nothing(core.plan_gone([deleting])) and writes_nothing(core.plan_gone([]))


def test_the_cluster_of_a_finished_job_is_kept() -> None:
    assert writes_nothing(plan(job_on("completed"), cluster(phase="Succeeded")))


def test_the_next_attempts_cluster_is_kept_during_a_backoff_then_adopted() -> None:
    waiting = job_on("pending", executor=None, dispatch_after=NOW + timedelta(seconds=5))
    early = cluster(OLD, attempt=3, phase=None)
    made = plan(waiting, early)
    assert writes_nothing(made) and made.requeue_after == timedelta(seconds=5)
    later = core.plan(waiting, [early], NOW + timedelta(seconds=5), POLICY, fresh_executor=FRESH)
    assert later.status is not None and later.status.executor == OLD and later.create is None


def test_a_next_attempts_cluster_is_deleted_once_no_dispatch_is_waited_for() -> None:
    made = plan(job_on("cancelled"), cluster(OLD, attempt=3, phase=None))
    assert made.delete == (OLD,) and made.status is None


# --- requests ----------------------------------------------------------------------


def test_a_reschedule_is_one_plan_reset_and_redispatch() -> None:
    job = core.with_request(job_on("running"), RESCHEDULE, "t-1")
    made = plan(job, cluster())
    status = made.status
    assert status is not None
    assert (status.state, status.executor, status.attempt) == ("pending", FRESH, 3)
    assert status.history[-1].executor == CURRENT
    assert made.create is not None and made.create["spec"]["attempt"] == 3
    assert made.delete == (CURRENT,)
    assert [e.reason for e in made.events] == ["Rescheduled"]
    assert made.events[0].message == f"rescheduled from running on {CURRENT}"
    assert set(made.outcomes) == {Outcome("reschedule", "rescheduled"), Outcome("dispatch")}
    assert outcome_of(made, "reschedule") == "rescheduled"


@pytest.mark.parametrize("state", ["completed", "failed", "cancelled"])
def test_an_unforced_reschedule_of_a_finished_job_is_skipped(state: JobState) -> None:
    job = core.with_request(job_on(state), RESCHEDULE, "t-1")
    made = plan(job, cluster(phase="Succeeded"))
    assert outcome_of(made, "reschedule") == "skipped_terminal"
    assert made.create is None and made.delete == ((CURRENT,) if state == "cancelled" else ())
    assert made.status is not None and made.status.state == state
    assert [e.reason for e in made.events] == ["RescheduleSkipped"]


def test_a_forced_reschedule_of_a_finished_job_runs_it_again() -> None:
    job = core.with_request(job_on("completed"), RESCHEDULE, "t-1", force=True)
    made = plan(job, cluster(phase="Succeeded"))
    assert outcome_of(made, "reschedule") == "rescheduled"
    assert made.status is not None and made.status.executor == FRESH
    assert made.delete == (CURRENT,)
    assert made.events[0].message.endswith("(forced)")


def test_a_cancel_ends_the_job_and_deletes_its_cluster() -> None:
    made = plan(core.with_request(job_on("running"), CANCEL, "c-1"), cluster())
    assert made.status is not None and made.status.state == "cancelled"
    assert made.delete == (CURRENT,) and made.create is None
    assert [e.reason for e in made.events] == ["Cancelled"]
    assert outcome_of(made, "cancel") == "cancelled"


def test_an_over_long_token_is_refused_with_a_warning() -> None:
    made = plan(core.with_request(job_on("running"), RESCHEDULE, "x" * 257), cluster())
    assert outcome_of(made, "reschedule") == "invalid"
    assert [(e.type, e.reason) for e in made.events] == [("Warning", "InvalidRescheduleRequest")]
    assert made.status is not None and made.status.executor == CURRENT
    assert made.delete == () and made.create is None


def test_a_loss_and_a_request_at_once_both_have_their_event() -> None:
    made = plan(core.with_request(job_on("running"), RESCHEDULE, "t-1"))
    assert [e.reason for e in made.events] == ["ExecutorLost", "Rescheduled"]
    assert outcome_of(made, "reschedule") == "rescheduled" and outcome_of(made, "orphan") == ""


def test_a_handled_token_is_not_handled_again() -> None:
    job = core.with_request(job_on("running"), RESCHEDULE, "t-1")
    done, clusters = carried_out(job, plan(job, cluster()), [cluster()])
    assert writes_nothing(plan(done, *clusters))


# --- the plan is a fixed point once carried out -------------------------------------

SCENARIOS: list[tuple[str, Job, list[ExecutorCluster]]] = [
    ("new", make_job(), []),
    ("lost, no backoff", job_on("running"), []),
    ("reschedule", core.with_request(job_on("running"), RESCHEDULE, "t"), [cluster()]),
    ("forced", core.with_request(job_on("completed"), RESCHEDULE, "t", force=True), [cluster()]),
    ("cancel", core.with_request(job_on("pending"), CANCEL, "c"), [cluster(phase=None)]),
    ("left behind", job_on("running"), [cluster(), cluster(OLD, attempt=1)]),
    ("terminated", job_on("running"), [cluster(phase="Terminated")]),
    ("succeeded", job_on("running"), [cluster(phase="Succeeded")]),
]


@pytest.mark.parametrize(
    ("job", "clusters"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_planning_again_after_carrying_a_plan_out_changes_nothing(
    job: Job, clusters: list[ExecutorCluster]
) -> None:
    policy = Policy(backoff_base=timedelta(0))
    made = core.plan(job, clusters, NOW, policy, fresh_executor=FRESH)
    assert not writes_nothing(made)
    done, left = carried_out(job, made, clusters)
    again = core.plan(done, left, NOW, policy, fresh_executor="job-executor-other")
    assert writes_nothing(again) and again.events == () and again.outcomes == ()


# --- events: one function for plans and for crash repair ----------------------------


@pytest.mark.parametrize(
    "job",
    [
        core.with_request(job_on("running"), RESCHEDULE, "t"),
        core.with_request(job_on("completed"), RESCHEDULE, "t"),
        core.with_request(job_on("running"), CANCEL, "c"),
        core.with_request(job_on("failed"), CANCEL, "c"),
        core.with_request(job_on("running"), CANCEL, "c" * 300),
    ],
)
def test_repair_posts_exactly_the_events_the_plan_made(job: Job) -> None:
    made = plan(job, cluster())
    assert made.status is not None and made.events
    assert core.events(made.status, since=NOW - timedelta(minutes=1)) == made.events
    assert core.events(made.status, since=NOW + timedelta(seconds=1)) == ()


def test_event_names_are_per_job_and_request() -> None:
    job = core.with_request(job_on("running"), RESCHEDULE, "t")
    (event,) = plan(job, cluster()).events
    other = with_status(make_job(uid="other-uid"), state="running")
    assert core.event_name(job, event.key) != core.event_name(other, event.key)
    assert event.key == core.request_key(RESCHEDULE, core.token_digest("t"))
    assert JOB_UID  # the factories' uid names the default job


# --- what `job-operator reschedule --dry-run` asks ----------------------------------


@pytest.mark.parametrize(
    ("state", "force", "outcome"),
    [
        ("pending", False, "rescheduled"),
        ("running", False, "rescheduled"),
        ("completed", False, "skipped_terminal"),
        ("failed", False, "skipped_terminal"),
        ("cancelled", False, "skipped_terminal"),
        ("completed", True, "rescheduled"),
    ],
)
def test_a_hypothetical_request_predicts_its_outcome(
    state: JobState, force: bool, outcome: str
) -> None:
    job = job_on(state)
    made = core.plan(
        core.with_request(job, RESCHEDULE, "dry", force=force), [cluster()], NOW, POLICY
    )
    assert outcome_of(made, "reschedule") == outcome
    assert job.metadata.annotations == {}  # the job itself is left as it was


def test_a_prediction_sees_the_cluster_as_it_is() -> None:
    """A job still `running` whose cluster has succeeded would be skipped: the plan
    follows the cluster before it handles the request."""
    job = core.with_request(job_on("running"), RESCHEDULE, "dry")
    made = core.plan(job, [cluster(phase="Succeeded")], NOW, POLICY)
    assert outcome_of(made, "reschedule") == "skipped_terminal"
