"""Property-based tests: random sequences of requests, dispatches and executor reports.

A small in-test "world" plays the API server, the dispatcher and the cluster provisioner:
it keeps the Job and every ExecutorCluster ever created, feeds events through the pure
functions of job_operator.core and applies their decisions. After every step the
invariants of the README and docs/reference.md must hold.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from job_operator import core, executors, names
from job_operator.core import Decision, Policy
from job_operator.models import (
    HISTORY_LIMIT,
    TERMINAL_STATES,
    TOKEN_MAX_LENGTH,
    ExecutorCluster,
    HistoryEntry,
    Job,
    JobStatus,
)
from tests.unit.factories import NOW, annotated, events_of, let_go, make_job, with_status

RESCHEDULE = names.RESCHEDULE_ANNOTATION
FORCE = names.RESCHEDULE_FORCE_ANNOTATION
CANCEL = names.CANCEL_ANNOTATION
POLICY = Policy(backoff_base=timedelta(seconds=1), backoff_cap=timedelta(seconds=8))
PHASES = ("Provisioning", "Running", "Succeeded", "Failed", "Terminated")
DELETED = "deleted"
# what happens to the current cluster, weighted towards the job actually running
CURRENT_EVENTS = ("Running", "Running", "Running", "Succeeded", *PHASES, DELETED)
CORE_FIELDS = ("state", "executor", "attempt", "result", "history")


def core_fields(status: JobStatus) -> tuple[Any, ...]:
    return tuple(getattr(status, field) for field in CORE_FIELDS)


class JobWorld(RuleBasedStateMachine):
    """One Job, its ExecutorClusters, and a clock."""

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.job = make_job()
        self.models: dict[str, ExecutorCluster] = {}  # every executor ever created
        self.dispatched: list[str] = []  # their names, in order
        self.existing: set[str] = set()  # not deleted yet
        self.counter = 0
        self.first_attempt = 0  # attempts made before the world started
        self.prehistoric: set[str] = set()  # executors of those attempts
        self.handled: dict[str, set[str]] = {RESCHEDULE: set(), CANCEL: set()}
        self.rejected: dict[str, set[str]] = {RESCHEDULE: set(), CANCEL: set()}

    # --- the world's machinery ----------------------------------------------------------

    def fresh_token(self, long: bool = False) -> str:
        self.counter += 1
        token = f"{self.counter:04d}-{uuid.uuid4()}"
        return token.ljust(TOKEN_MAX_LENGTH + 1 + self.counter, "x") if long else token

    def apply(self, decision: Decision, *, by_request: bool = False) -> None:
        """Write the decision (after checking it against the job it was made from)."""
        before = self.job.status
        after = decision.status
        self.check_step(before, after, decision, by_request=by_request)
        self.job = self.job.model_copy(update={"status": after})
        if (left := let_go(decision)) is not None:
            self.existing.discard(left)

    def check_step(
        self, before: JobStatus, after: JobStatus, decision: Decision, *, by_request: bool
    ) -> None:
        forced = (
            by_request
            and after.reschedule is not None
            and after.reschedule != before.reschedule
            and after.reschedule.force
        )
        if before.terminal and not forced:
            assert core_fields(after) == core_fields(before), "a terminal job changed"
        assert after.attempt >= before.attempt, "attempt decreased"
        # history is append-only: at most one new entry per step, the oldest dropped at 20
        if after.history != before.history:
            assert after.history == [*before.history, after.history[-1]][-HISTORY_LIMIT:]
            assert after.history[-1].attempt == before.attempt
            # (None when a cancel in the same pass had already let go of the executor)
            assert after.history[-1].executor in (before.executor, None)
        # lastTransitionTime moves only when a condition's status does
        for new_condition in after.conditions:
            old_condition = before.condition(new_condition.type)
            if old_condition is not None and old_condition.status == new_condition.status:
                assert new_condition.last_transition_time == old_condition.last_transition_time
            elif old_condition is None or old_condition != new_condition:
                assert new_condition.last_transition_time == self.now
        assert let_go(decision) is None or let_go(decision) == before.executor, (
            "deleted an executor the job was not on"
        )
        for annotation, before_record, after_record in (
            (RESCHEDULE, before.reschedule, after.reschedule),
            (CANCEL, before.cancel, after.cancel),
        ):
            if after_record == before_record:
                continue
            assert by_request, f"{annotation} record changed without a request"
            assert after_record is not None
            token = self.job.metadata.annotations.get(annotation)
            assert after_record.request == token, "recorded a token other than the annotation's"
            assert token not in self.handled[annotation], f"token {token!r} handled twice"
            assert len(token) <= TOKEN_MAX_LENGTH
            self.handled[annotation].add(token)
        if before.reschedule != after.reschedule and after.reschedule is not None:
            record = after.reschedule
            assert record.force == (self.job.metadata.annotations.get(FORCE) == record.request)
            skipped = record.previous_state in TERMINAL_STATES and not record.force
            assert record.outcome == ("skipped_terminal" if skipped else "rescheduled")
            if not skipped:
                assert (after.state, after.executor, after.auto_reschedules) == ("pending", None, 0)
            elif after.cancel == before.cancel:  # no cancel acted in the same pass
                unchanged = after.model_copy(
                    update={"reschedule": before.reschedule, "conditions": before.conditions}
                )
                assert unchanged == before, "a skipped request changed more than its record"
        for annotation in (RESCHEDULE, CANCEL):
            old = {r.token_digest for r in before.rejected_requests if r.annotation == annotation}
            new = {r.token_digest for r in after.rejected_requests if r.annotation == annotation}
            for digest in new - old:
                token = self.job.metadata.annotations[annotation]
                assert by_request
                assert digest == core.token_digest(token)
                assert len(token) > TOKEN_MAX_LENGTH
                assert digest not in self.rejected[annotation], "a rejected token retried"
                self.rejected[annotation].add(digest)
                assert core_fields(after) == core_fields(before), "a rejected request acted"

    def handle(self) -> None:
        self.apply(core.handle_requests(self.job, self.now), by_request=True)

    def annotate(self, annotations: dict[str, str]) -> None:
        self.job = annotated(self.job, annotations)
        self.handle()

    def report(self, name: str, executor: ExecutorCluster | None) -> None:
        before = self.job.status
        decision = core.follow_executor(self.job, executor, name, POLICY, self.now)
        if name != before.executor or before.terminal:
            assert decision.status == before, f"{name} changed a job that left it or ended"
            assert events_of(decision) == ()
            assert let_go(decision) is None
        self.apply(decision)
        after = self.job.status
        if name != before.executor or before.terminal:
            return
        phase = None if executor is None else executor.status.phase
        if phase in (None, "Terminated"):  # orphaned
            assert let_go(decision) == name
            assert after.executor is None
            assert after.history[-1].reason == "ExecutorLost"
            assert after.reschedule == before.reschedule
            if before.auto_reschedules < self.job.spec.max_auto_reschedules:
                losses = before.auto_reschedules + 1
                assert (after.state, after.auto_reschedules) == ("pending", losses)
                assert after.dispatch_after == self.now + POLICY.backoff(losses)
                assert core.dispatch_due(self.job, self.now) == POLICY.backoff(losses)
            else:
                assert (after.state, after.reason) == ("failed", "ExecutorLostTooOften")
                assert after.auto_reschedules == before.auto_reschedules
        else:
            expected = {"Running": "running", "Succeeded": "completed", "Failed": "failed"}
            assert after.state == expected.get(phase or "", before.state)
            assert after.executor == name
            assert after.auto_reschedules == before.auto_reschedules
            if phase == "Succeeded":
                assert executor is not None
                assert after.result == (executor.status.result or {})

    # --- rules -------------------------------------------------------------------------

    @initialize(
        budget=st.integers(min_value=0, max_value=4),
        earlier=st.sampled_from([0, 0, 1, HISTORY_LIMIT - 1, HISTORY_LIMIT, HISTORY_LIMIT + 5]),
    )
    def create(self, budget: int, earlier: int) -> None:
        """A new job, or one with `earlier` attempts behind it (history nearly or quite full)."""
        self.job = make_job(max_auto_reschedules=budget)
        self.apply(core.initialise(self.job, self.now))
        if earlier:
            self.prehistoric = {
                executors.new_executor_name(str(uuid.uuid4())) for _ in range(earlier)
            }
            history = [
                HistoryEntry(attempt=i, executor=name, state="running", reason="Rescheduled")
                for i, name in enumerate(sorted(self.prehistoric), start=1)
            ][-HISTORY_LIMIT:]
            self.first_attempt = earlier
            self.job = with_status(self.job, attempt=earlier, history=history)

    @rule(seconds=st.integers(min_value=0, max_value=20))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def dispatch(self) -> None:
        due = core.dispatch_due(self.job, self.now)
        if due != timedelta(0):
            waiting = self.job.status.dispatch_after
            if due is not None:  # waiting out a backoff
                assert waiting is not None
                assert due == waiting - self.now > timedelta(0)
            decision = core.dispatch(
                self.job, executors.new_executor_name(str(uuid.uuid4())), self.now
            )
            assert decision.status == self.job.status, "dispatched while not due"
            return
        status = self.job.status
        assert status.state == "pending"
        assert status.executor is None
        assert status.dispatch_after is None or status.dispatch_after <= self.now
        name = executors.new_executor_name(str(uuid.uuid4()))
        assert name not in self.dispatched
        assert name not in self.prehistoric
        manifest = executors.executor_manifest(self.job, name)
        manifest["metadata"]["uid"] = str(uuid.uuid4())
        manifest["metadata"]["creationTimestamp"] = self.now
        executor = ExecutorCluster.model_validate(manifest)
        assert executor.spec.attempt == self.job.status.attempt + 1
        self.models[name] = executor
        self.existing.add(name)
        self.dispatched.append(name)
        self.apply(core.dispatch(self.job, name, self.now))
        assert self.job.status.executor == name
        assert self.job.status.attempt == executor.spec.attempt

    @rule(
        force=st.sampled_from(["none", "force", "stale"]),
        long=st.sampled_from([False, False, False, True]),
    )
    def reschedule(self, force: str, long: bool) -> None:
        """A new reschedule token: unforced, forced, or with a force left from before."""
        previous = self.job.metadata.annotations.get(RESCHEDULE, "stale-token")
        token = self.fresh_token(long)
        annotations = {RESCHEDULE: token}
        if force == "force":
            annotations[FORCE] = token
        elif force == "stale":
            annotations[FORCE] = previous
        self.annotate(annotations)

    @rule(force=st.booleans())
    def cancel_and_reschedule(self, force: bool) -> None:
        """Both requests in one write: cancel first, so only a forced reschedule acts."""
        before = self.job.status
        token = self.fresh_token()
        annotations = {CANCEL: self.fresh_token(), RESCHEDULE: token}
        if force:
            annotations[FORCE] = token
        self.annotate(annotations)
        after = self.job.status
        assert after.cancel is not None
        assert after.cancel.previous_state == before.state
        assert after.reschedule is not None
        assert after.reschedule.previous_state == (
            "cancelled" if not before.terminal else before.state
        )
        assert after.state == (
            "pending" if force else before.state if before.terminal else "cancelled"
        )

    @rule()
    def reapply(self) -> None:
        """The same manifest applied again (or any other event): nothing new to handle."""
        before = self.job.status
        self.handle()
        assert self.job.status == before, "re-applying the same tokens changed the job"

    @rule(action=st.sampled_from(["repeat", "repeat", "repeat", "new", "long"]))
    def cancel(self, action: str) -> None:
        """A cancel token: a new one, an over-long one, or the last one written again."""
        last = self.job.metadata.annotations.get(CANCEL)
        if action == "repeat":
            if last is None:
                return
            before = self.job.status
            self.annotate({CANCEL: last})
            assert self.job.status == before, "a repeated cancel token acted again"
        else:
            self.annotate({CANCEL: self.fresh_token(long=action == "long")})

    @precondition(lambda self: self.job.status.executor in self.existing)
    @rule(event=st.sampled_from([*CURRENT_EVENTS]), data=st.data())
    def current_reports(self, event: str, data: st.DataObject) -> None:
        """The provisioner moves the job's current cluster on, or it is deleted."""
        self.executor_event(self.job.status.executor or "", event, data)

    @precondition(lambda self: len(self.dispatched) > 1)
    @rule(event=st.sampled_from([*PHASES, DELETED]), data=st.data())
    def old_reports(self, event: str, data: st.DataObject) -> None:
        """An event of an earlier cluster (a late watch event, or one not deleted yet)."""
        name = data.draw(st.sampled_from(self.dispatched[:-1]), label="old executor")
        self.executor_event(name, event, data)

    def executor_event(self, name: str, event: str, data: st.DataObject) -> None:
        if event == DELETED:
            self.existing.discard(name)
            self.report(name, None)
            return
        result = data.draw(st.none() | st.just({"rows": 1}), label="result")
        executor = self.models[name]
        status = executor.status.model_copy(update={"phase": event, "result": result})
        self.models[name] = executor.model_copy(update={"status": status})
        self.report(name, self.models[name])

    # --- invariants --------------------------------------------------------------------

    @invariant()
    def executor_is_the_latest_dispatched_or_none(self) -> None:
        executor = self.job.status.executor
        assert len(set(self.dispatched)) == len(self.dispatched), "an executor name reused"
        if executor is not None:
            assert self.dispatched, "an executor nobody dispatched"
            assert executor == self.dispatched[-1]
            assert executor in self.existing or self.job.status.terminal, (
                "a live job points at a deleted executor"
            )

    @invariant()
    def attempt_counts_dispatches(self) -> None:
        assert self.job.status.attempt == self.first_attempt + len(self.dispatched)

    @invariant()
    def history_records_attempts_that_ran(self) -> None:
        for entry in self.job.status.history:
            assert entry.executor is not None or entry.state in TERMINAL_STATES, entry

    @invariant()
    def bounded(self) -> None:
        status = self.job.status
        assert len(status.history) <= HISTORY_LIMIT
        assert 0 <= status.auto_reschedules <= self.job.spec.max_auto_reschedules

    @invariant()
    def state_is_consistent(self) -> None:
        status = self.job.status
        if status.state == "running":
            assert status.executor is not None
            assert status.started_at is not None
        if status.state == "completed":
            assert status.result is not None
        if status.terminal:
            assert status.ended_at is not None
            assert status.dispatch_after is None
            assert core.dispatch_due(self.job, self.now) is None
        if status.dispatch_after is not None:
            assert status.state == "pending"
            assert status.executor is None

    @invariant()
    def clusters_the_job_left_are_deleted(self) -> None:
        assert self.existing <= {self.job.status.executor}, "a cluster the job left was kept"
        # Were they all still there, a plan would delete every one but the job's own.
        planned = core.plan(self.job, list(self.models.values()), self.now, POLICY)
        assert set(planned.delete) == set(self.models) - {self.job.status.executor}

    @invariant()
    def status_round_trips_through_the_api(self) -> None:
        job = Job.model_validate(self.job.to_api())
        assert job.status == self.job.status


JobWorld.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJobWorld = JobWorld.TestCase
