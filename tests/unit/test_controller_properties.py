"""Property-based test of `core.plan` and the controller together, on the API double.

Random sequences of requests, provisioner reports, lost and late watch events, partial
reconciles and crashes (mid-write, then a restart from lists) against one Job. After every
step what the README and docs/reference.md promise must hold: each token handled once
with one event, no attempt ever given two clusters, a job never on a cluster that does not
exist (once settled), a finished job reset only by force, and nothing left behind once
settled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from job_operator import core, names
from job_operator.controller import Controller, OperatorConfig
from job_operator.models import TOKEN_MAX_LENGTH, Job
from job_operator.sweep import list_clusters, list_jobs, sweep
from tests.double import FakeApi

RESCHEDULE = names.RESCHEDULE_ANNOTATION
FORCE = names.RESCHEDULE_FORCE_ANNOTATION
CANCEL = names.CANCEL_ANNOTATION
POLICY = core.Policy(backoff_base=timedelta(0))
KEY = ("default", "job")
CRASH_POINTS = ("create executorclusters", "patch jobs/status", "create events")


class ControllerWorld(RuleBasedStateMachine):
    """One Job on the API double, a controller, and the provisioner's hand."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.api = FakeApi(page_size=3)
        self.controller = self.started()
        self.api.create_job("job", maxAutoReschedules=2)
        self.counter = 0
        self.sent: dict[str, list[str]] = {RESCHEDULE: [], CANCEL: []}
        self.forced: set[str] = set()

    def teardown(self) -> None:
        self.loop.close()

    def run(self, coro: object) -> None:
        self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def started(self) -> Controller:
        return Controller(self.api, OperatorConfig(policy=POLICY))

    @property
    def job(self) -> Job:
        return self.api.job("job")

    def note_clusters(self) -> None:
        live = Counter(body["spec"]["attempt"] for body in self.api.clusters.values())
        assert all(n == 1 for n in live.values()), f"an attempt has two clusters: {live}"

    async def reconcile(self, limit: int) -> None:
        for _ in range(limit):
            self.api.deliver(self.controller)
            self.note_clusters()
            if not len(self.controller.queue):
                return
            key = await self.controller.queue.get()
            try:
                await self.controller.reconcile(key)
            finally:
                self.controller.queue.done(key)
                self.note_clusters()

    async def settle(self) -> None:
        await self.reconcile(200)
        assert not len(self.controller.queue), "never settled"

    # --- users ---------------------------------------------------------------------

    def token(self, long: bool = False) -> str:
        self.counter += 1
        return f"{self.counter:04d}".ljust(TOKEN_MAX_LENGTH + 1 if long else 4, "x")

    @rule(force=st.booleans(), long=st.sampled_from([False, False, False, True]))
    def reschedule(self, force: bool, long: bool) -> None:
        token = self.token(long)
        self.sent[RESCHEDULE].append(token)
        annotations = {RESCHEDULE: token}
        if force:
            annotations[FORCE] = token
            self.forced.add(token)
        self.api.annotate("job", annotations)

    @rule()
    def cancel(self) -> None:
        token = self.token()
        self.sent[CANCEL].append(token)
        self.api.annotate("job", {CANCEL: token})

    @rule()
    def reapply(self) -> None:
        """GitOps applies the same manifest again."""
        self.api.annotate("job", dict(self.job.metadata.annotations))

    # --- the provisioner ---------------------------------------------------------------

    @rule(phase=st.sampled_from(["Running", "Running", "Succeeded", "Failed", "Terminated"]))
    def current_reports(self, phase: str) -> None:
        name = self.job.status.executor
        if name is not None and ("default", name) in self.api.clusters:
            self.api.set_phase(name, phase, result={"rows": 1})

    @rule(data=st.data())
    def a_cluster_is_deleted(self, data: st.DataObject) -> None:
        names_ = self.api.cluster_names()
        if names_:
            self.api.remove_cluster(data.draw(st.sampled_from(names_)))

    # --- the operator ------------------------------------------------------------------

    @rule(limit=st.integers(min_value=1, max_value=4))
    def reconcile_some(self, limit: int) -> None:
        self.run(self.reconcile(limit))

    @rule()
    def watch_misses_cluster_events(self) -> None:
        """The cluster watch drops what happened so far (kopf relists jobs on a broken
        watch; losses of clusters are the sweep's to find)."""
        self.api.pending = [e for e in self.api.pending if e.kind == "job"]

    @rule()
    def sweeps(self) -> None:
        self.run(sweep(self.controller))

    @rule(point=st.sampled_from(CRASH_POINTS))
    def crash_and_restart(self, point: str) -> None:
        """The operator dies at `point` of a reconcile; a new one starts from lists."""
        self.api.failing[point] = RuntimeError("SIGKILL")
        with contextlib.suppress(RuntimeError):
            self.run(self.settle())
        self.api.failing.clear()
        self.note_clusters()
        self.api.pending.clear()  # a new process: its watches start from lists
        self.controller = self.started()  # as operator.start: clusters, then jobs
        self.run(list_clusters(self.controller))
        self.run(list_jobs(self.controller))

    @rule()
    def settles(self) -> None:
        self.run(sweep(self.controller))
        self.run(self.settle())
        self.check_settled()

    # --- what must hold ------------------------------------------------------------

    @invariant()
    def no_attempt_has_two_clusters(self) -> None:
        self.note_clusters()

    @invariant()
    def tokens_are_handled_at_most_once_and_in_order(self) -> None:
        status = self.job.status
        for annotation, record in ((RESCHEDULE, status.reschedule), (CANCEL, status.cancel)):
            if record is not None:
                assert record.request in self.sent[annotation]

    @invariant()
    def request_events_are_single(self) -> None:
        names_ = Counter(e["metadata"]["name"] for e in self.api.events.values())
        assert all(n == 1 for n in names_.values())

    def check_settled(self) -> None:
        status = self.job.status
        live = self.api.cluster_names()
        if status.executor is not None:
            assert status.executor in live or status.terminal, (status.executor, live)
        assert set(live) <= {status.executor}, f"left behind: {live} ({status.executor})"
        if not status.terminal:
            assert status.executor is not None, "a waiting job was not dispatched"
        # The last token of each kind is handled, with its one event (given the events
        # a crash lost are repaired: a restart does that).
        self.run(list_jobs(self.started()))
        job = self.job
        for annotation, record in ((RESCHEDULE, status.reschedule), (CANCEL, status.cancel)):
            tokens = self.sent[annotation]
            valid = [t for t in tokens if len(t) <= TOKEN_MAX_LENGTH]
            if valid and valid[-1] == tokens[-1]:
                assert record is not None and record.request == tokens[-1]
                digest = core.token_digest(tokens[-1])
                assert (
                    "default",
                    core.event_name(job, core.request_key(annotation, digest)),
                ) in self.api.events
        for entry in status.history:
            if entry.reason == "Rescheduled" and entry.state in ("completed", "failed"):
                assert self.forced, "a finished attempt was reset without force"


ControllerWorld.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestControllerWorld = ControllerWorld.TestCase
