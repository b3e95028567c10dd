"""The controller against the in-memory API double: reconcile, conflicts, crashes and
adoption, the sweep, event repair, start-up. Each test runs in milliseconds, without an
API server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest

from job_operator import core, metrics, names
from job_operator.controller import Controller, OperatorConfig, utcnow
from job_operator.kube import Conflict
from job_operator.models import ExecutorCluster, Job
from job_operator.operator import start
from job_operator.sweep import list_clusters, list_jobs, sweep
from tests.double import FakeApi
from tests.helpers import async_wait_for

RESCHEDULE = names.RESCHEDULE_ANNOTATION
CANCEL = names.CANCEL_ANNOTATION
NO_BACKOFF = core.Policy(backoff_base=timedelta(0))
YEAR_ZERO = "0000-01-01T00:00:00Z"  # stored by the API server; no datetime holds it


def controller_on(api: FakeApi, policy: core.Policy = NO_BACKOFF) -> Controller:
    return Controller(api, OperatorConfig(policy=policy))


async def run_until_quiet(api: FakeApi, controller: Controller, *, deliver: bool = True) -> None:
    """Deliver the watch events and reconcile the queued jobs until nothing is left."""
    for _ in range(100):
        if deliver:
            api.deliver(controller)
        if not len(controller.queue):
            return
        while len(controller.queue):
            key = await controller.queue.get()
            try:
                await controller.reconcile(key)
            finally:
                controller.queue.done(key)
    raise AssertionError("the controller never settled")


async def running_job(api: FakeApi, controller: Controller, name: str = "nightly") -> str:
    """A job dispatched and running; returns its cluster's name."""
    api.create_job(name)
    await run_until_quiet(api, controller)
    executor = api.job(name).status.executor
    assert executor is not None
    api.set_phase(executor, "Running")
    await run_until_quiet(api, controller)
    assert api.job(name).status.state == "running"
    return executor


def live_clusters(api: FakeApi, job: str = "nightly") -> list[str]:
    uid = api.job(job).metadata.uid
    return [n for (_, n), b in api.clusters.items() if b["spec"]["jobRef"]["uid"] == uid]


async def test_a_new_job_is_dispatched_with_one_create_and_one_status_write() -> None:
    api = FakeApi()
    controller = controller_on(api)
    api.create_job("nightly")
    await run_until_quiet(api, controller)
    status = api.job("nightly").status
    assert (status.state, status.attempt) == ("pending", 1)
    assert live_clusters(api) == [status.executor]
    assert api.writes() == ["create executorclusters", "patch jobs/status"]


async def test_a_reschedule_cycle_costs_create_write_event_delete_and_the_follow() -> None:
    api = FakeApi()
    controller = controller_on(api)
    first = await running_job(api, controller)
    api.calls.clear()
    api.annotate("nightly", {RESCHEDULE: "t-1"})
    await run_until_quiet(api, controller)
    status = api.job("nightly").status
    assert status.reschedule is not None and status.reschedule.outcome == "rescheduled"
    assert status.executor not in (None, first) and status.attempt == 2
    assert live_clusters(api) == [status.executor]
    assert api.writes() == [
        "create executorclusters",
        "patch jobs/status",
        "create events",
        "delete executorclusters",
    ]
    assert [e["reason"] for e in api.events.values()] == ["Rescheduled"]
    api.set_phase(status.executor or "", "Running")
    await run_until_quiet(api, controller)
    assert api.job("nightly").status.state == "running"


async def test_the_same_token_delivered_again_is_not_handled_again() -> None:
    api = FakeApi()
    controller = controller_on(api)
    await running_job(api, controller)
    api.annotate("nightly", {RESCHEDULE: "t-1"})
    await run_until_quiet(api, controller)
    handled = api.job("nightly")
    api.calls.clear()
    api.annotate("nightly", {RESCHEDULE: "t-1"})  # re-applied by GitOps: same token
    await run_until_quiet(api, controller)
    assert api.writes() == []
    assert api.job("nightly").status == handled.status


async def test_a_conflict_reads_again_and_plans_again() -> None:
    api = FakeApi()
    controller = controller_on(api)
    first = await running_job(api, controller)
    api.annotate("nightly", {RESCHEDULE: "t-1"})
    api.deliver(controller)
    # The job changes again before the reconcile writes: its cached copy is stale.
    api.annotate("nightly", {CANCEL: "c-1"})
    conflicts = metrics.CONFLICTS._value.get()
    await controller.reconcile(("default", "nightly"))
    assert metrics.CONFLICTS._value.get() == conflicts + 1
    await run_until_quiet(api, controller)
    status = api.job("nightly").status
    # Planned again on the fresh job: cancel first, then the unforced reschedule skipped.
    assert status.state == "cancelled"
    assert status.reschedule is not None and status.reschedule.outcome == "skipped_terminal"
    assert first not in api.cluster_names() and live_clusters(api) == []


async def test_a_crash_between_create_and_write_leaves_a_cluster_that_is_adopted() -> None:
    api = FakeApi()
    crashed = controller_on(api)
    api.create_job("nightly")
    api.deliver(crashed)
    api.failing["patch jobs/status"] = RuntimeError("the operator died here")
    with pytest.raises(RuntimeError):
        await crashed.reconcile(("default", "nightly"))
    (made,) = api.cluster_names()
    assert api.job("nightly").status.executor is None
    # A new process: caches from lists, then the watch's events.
    restarted = controller_on(api)
    await list_clusters(restarted)
    api.pending.clear()
    restarted.job_seen(api.job("nightly"))
    await run_until_quiet(api, restarted)
    assert api.job("nightly").status.executor == made
    assert api.cluster_names() == [made]


async def test_a_create_retried_after_it_landed_is_taken_as_made() -> None:
    api = FakeApi()
    controller = controller_on(api)
    api.create_job("nightly")
    api.deliver(controller)
    job = api.job("nightly")
    plan = core.plan(job, [], utcnow(), NO_BACKOFF)
    assert plan.create is not None
    await api.create_executor(plan.create)  # the first try, whose answer was lost
    await controller.carry_out(job, plan)
    assert api.job("nightly").status.executor == plan.create["metadata"]["name"]
    assert len(api.cluster_names()) == 1


async def test_a_phase_from_a_cluster_the_job_left_changes_nothing() -> None:
    api = FakeApi()
    controller = controller_on(api)
    first = await running_job(api, controller)
    api.annotate("nightly", {RESCHEDULE: "t-1"})
    await run_until_quiet(api, controller)
    before = api.job("nightly").status
    assert before.executor != first
    late = await api.create_executor(
        {
            "metadata": {"name": first + "-late", "namespace": "default"},
            "spec": {
                "jobRef": {"name": "nightly", "uid": api.job("nightly").metadata.uid},
                "attempt": 1,
            },
        }
    )
    api.set_phase(late.metadata.name, "Succeeded", result={"stale": True})
    await run_until_quiet(api, controller)
    after = api.job("nightly").status
    assert (after.state, after.executor, after.result) == (before.state, before.executor, None)
    assert late.metadata.name not in api.cluster_names()


async def test_a_late_event_of_a_cluster_it_deleted_does_not_bring_it_back() -> None:
    api = FakeApi()
    controller = controller_on(api)
    first = await running_job(api, controller)
    before_deletion = ExecutorCluster.model_validate(api.clusters[("default", first)])
    api.annotate("nightly", {RESCHEDULE: "t-1"})
    api.deliver(controller)
    key = await controller.queue.get()
    await controller.reconcile(key)  # deletes `first`; its DELETED event is on its way
    controller.queue.done(key)
    api.calls.clear()
    controller.cluster_seen(before_deletion)  # an event from before, delivered late
    await run_until_quiet(api, controller, deliver=False)  # before the DELETED event
    await run_until_quiet(api, controller)
    assert "delete executorclusters" not in api.calls and "get jobs" not in api.calls


async def test_a_lost_cluster_is_replaced_and_counted() -> None:
    api = FakeApi()
    controller = controller_on(api)
    first = await running_job(api, controller)
    orphans = metrics.ORPHANS_FOUND._value.get()
    api.remove_cluster(first)
    await run_until_quiet(api, controller)
    status = api.job("nightly").status
    assert status.auto_reschedules == 1 and status.executor not in (None, first)
    assert metrics.ORPHANS_FOUND._value.get() == orphans + 1
    assert [e["reason"] for e in api.events.values()] == ["ExecutorLost"]


async def test_a_backoff_queues_the_job_again_when_it_ends() -> None:
    api = FakeApi()
    controller = controller_on(api, core.Policy(backoff_base=timedelta(milliseconds=50)))
    first = await running_job(api, controller)
    api.remove_cluster(first)
    await run_until_quiet(api, controller)
    assert api.job("nightly").status.executor is None  # waiting out the backoff
    key = await asyncio.wait_for(controller.queue.get(), timeout=2)
    assert key == ("default", "nightly")
    await controller.reconcile(key)
    assert api.job("nightly").status.executor is not None


async def test_deletions_without_a_write_are_made_only_on_a_fresh_read() -> None:
    api = FakeApi()
    controller = controller_on(api)
    current = await running_job(api, controller)
    api.calls.clear()
    # A cluster the job has left appears (made by an earlier process).
    await api.create_executor(
        {
            "metadata": {"name": "job-executor-left", "namespace": "default"},
            "spec": {
                "jobRef": {"name": "nightly", "uid": api.job("nightly").metadata.uid},
                "attempt": 1,
            },
        }
    )
    await run_until_quiet(api, controller)
    assert api.cluster_names() == [current]
    assert "get jobs" in api.calls


async def test_a_deleted_jobs_clusters_are_deleted() -> None:
    api = FakeApi()
    controller = controller_on(api)
    await running_job(api, controller)
    api.delete_job("nightly")
    dangling = metrics.DANGLING_DELETED._value.get()
    await run_until_quiet(api, controller)
    assert api.cluster_names() == []
    assert metrics.DANGLING_DELETED._value.get() == dangling + 1


async def test_a_cluster_event_for_a_job_not_seen_yet_deletes_nothing() -> None:
    api = FakeApi()
    controller = controller_on(api)
    await running_job(api, controller)
    newcomer = controller_on(api)  # its job cache is still empty
    await list_clusters(newcomer)
    api.pending.clear()
    newcomer.queue.add(("default", "nightly"))
    await run_until_quiet(api, newcomer, deliver=False)
    assert len(api.cluster_names()) == 1


async def test_the_sweep_finds_a_cluster_deleted_while_the_watch_was_down() -> None:
    api = FakeApi()
    controller = controller_on(api)
    first = await running_job(api, controller)
    api.remove_cluster(first)
    api.pending.clear()  # the watch missed it
    await run_until_quiet(api, controller)
    assert api.job("nightly").status.executor == first  # nothing seen yet
    await sweep(controller)
    await run_until_quiet(api, controller)
    status = api.job("nightly").status
    assert status.executor not in (None, first) and status.auto_reschedules == 1


async def test_the_sweep_deletes_clusters_of_jobs_deleted_while_down() -> None:
    api = FakeApi()
    controller = controller_on(api)
    await running_job(api, controller)
    api.delete_job("nightly")
    api.pending.clear()
    restarted = controller_on(api)
    await list_clusters(restarted)
    await run_until_quiet(api, restarted)
    assert len(api.cluster_names()) == 1  # nothing queued it yet
    await sweep(restarted)
    await run_until_quiet(api, restarted)
    assert api.cluster_names() == []


async def test_events_whose_post_failed_are_posted_by_the_sweep() -> None:
    api = FakeApi()
    controller = controller_on(api)
    await running_job(api, controller)
    api.failing["create events"] = OSError("API server restarting")
    api.annotate("nightly", {RESCHEDULE: "t-1"})
    await run_until_quiet(api, controller)
    assert api.events == {} and len(controller.unposted) == 1
    await sweep(controller)
    assert [e["reason"] for e in api.events.values()] == ["Rescheduled"]
    assert controller.unposted == []


async def test_repair_posts_a_crashs_lost_event_once() -> None:
    api = FakeApi()
    controller = controller_on(api)
    await running_job(api, controller)
    api.annotate("nightly", {RESCHEDULE: "t-1"})
    api.failing["create events"] = RuntimeError("the operator died here")
    with pytest.raises(RuntimeError):
        await run_until_quiet(api, controller)
    assert api.events == {} and api.job("nightly").status.reschedule is not None
    for _ in range(2):  # two restarts
        await list_jobs(controller_on(api))
    (event,) = api.events.values()
    assert event["reason"] == "Rescheduled"
    job = api.job("nightly")
    assert event["metadata"]["name"] == core.event_name(job, core.events(job.status)[0].key)


async def test_start_up_lists_the_jobs_and_handles_a_request_made_while_down() -> None:
    api = FakeApi()
    first = await running_job(api, controller_on(api))
    api.annotate("nightly", {RESCHEDULE: "t-1"}, manager="kubectl-annotate")
    api.pending.clear()  # a new process: no watch has delivered anything yet
    restarted = controller_on(api)
    await list_clusters(restarted)
    await list_jobs(restarted)
    listed = api.job("nightly").metadata.resource_version
    # kopf's watch, starting after, finds the listed version known: not parsed again.
    assert not restarted.jobs.is_new(("default", "nightly"), listed)
    await run_until_quiet(api, restarted, deliver=False)
    record = api.job("nightly").status.reschedule
    assert record is not None and record.request == "t-1" and record.outcome == "rescheduled"
    assert record.requested_by == "kubectl-annotate"  # the list kept who wrote it
    assert api.job("nightly").status.executor not in (None, first)


async def test_a_job_that_keeps_changing_is_given_up_for_now() -> None:
    api = FakeApi()
    controller = controller_on(api)
    api.create_job("nightly")
    api.deliver(controller)

    async def always_conflict(*_: object) -> None:
        raise Conflict("changed")

    api.write_job_status = always_conflict  # type: ignore[assignment,method-assign]
    with pytest.raises(Exception, match="kept changing"):
        await controller.reconcile(("default", "nightly"))
    assert len(api.cluster_names()) == 1  # made once, adopted on each new plan


def task_names(tasks: set[asyncio.Task[None]]) -> list[str]:
    """What each task runs: `Controller.work` for a worker, `sweep_forever` for the sweep."""
    return sorted(getattr(task.get_coro(), "__qualname__", "?") for task in tasks)


@asynccontextmanager
async def cancelled_at_exit(tasks: set[asyncio.Task[None]]) -> AsyncIterator[None]:
    """The operator's tasks, cancelled (and awaited) at the end of the test."""
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_start_lists_the_clusters_starts_the_workers_then_lists_the_jobs() -> None:
    api = FakeApi()
    kept = await running_job(api, controller_on(api), "kept")
    moved = await running_job(api, controller_on(api), "nightly")
    api.annotate("nightly", {RESCHEDULE: "t-1"})  # made while the operator was down
    api.pending.clear()  # a new process: no watch has delivered anything yet
    api.calls.clear()
    controller = Controller(api, OperatorConfig(policy=NO_BACKOFF, workers=3))
    tasks: set[asyncio.Task[None]] = set()
    workers_at_the_job_list: list[list[str]] = []
    job_pages = api.job_pages

    def watched_job_pages(namespace: str | None = None) -> AsyncIterator[list[Job]]:
        workers_at_the_job_list.append(task_names(tasks))
        return job_pages(namespace)

    api.job_pages = watched_job_pages  # type: ignore[method-assign]
    async with cancelled_at_exit(tasks):
        await start(controller, tasks)
        assert api.calls[0] == "list executorclusters"  # before any reconcile
        assert workers_at_the_job_list == [["Controller.work"] * 3]
        assert task_names(tasks) == ["Controller.work"] * 3 + ["sweep_forever"]

        async def handled() -> bool:
            record = api.job("nightly").status.reschedule
            return record is not None and record.request == "t-1"

        await async_wait_for(handled, timeout=10, interval=0.01, description="t-1 handled")
    rescheduled = api.job("nightly").status
    assert rescheduled.executor not in (None, moved) and rescheduled.attempt == 2
    # Its cluster was listed before its job was reconciled: not taken for a lost one.
    untouched = api.job("kept").status
    assert (untouched.state, untouched.executor, untouched.attempt) == ("running", kept, 1)


async def test_start_goes_on_with_its_workers_when_the_job_list_fails() -> None:
    api = FakeApi()
    api.failing["list jobs"] = OSError("connection reset by peer")
    controller = Controller(api, OperatorConfig(policy=NO_BACKOFF, workers=2))
    tasks: set[asyncio.Task[None]] = set()
    repair_errors = metrics.ERRORS.labels("repair")
    before = repair_errors._value.get()
    async with cancelled_at_exit(tasks):
        await start(controller, tasks)
        assert repair_errors._value.get() == before + 1
        assert task_names(tasks) == ["Controller.work"] * 2 + ["sweep_forever"]
        api.create_job("nightly")  # the watch brings the jobs all the same
        api.deliver(controller)

        async def dispatched() -> bool:
            return api.job("nightly").status.executor is not None

        await async_wait_for(dispatched, timeout=10, interval=0.01, description="a dispatch")


def errors(stage: str) -> float:
    value: float = metrics.ERRORS.labels(stage)._value.get()
    return value


async def work_until_idle(api: FakeApi, controller: Controller, key: tuple[str, str]) -> None:
    """Deliver the watch events and let a worker (`Controller.work`: its error count and
    retry included) take `key` until it is neither queued nor being worked on."""
    api.deliver(controller)

    async def idle() -> bool:  # neither queued nor being worked on
        return not len(controller.queue) and key not in controller.queue._processing

    worker = {asyncio.create_task(controller.work())}
    async with cancelled_at_exit(worker):
        await async_wait_for(idle, timeout=5, interval=0.01, description=f"{key} worked off")


async def test_a_job_it_cannot_read_is_left_alone_not_retried_until_fixed() -> None:
    api = FakeApi()
    executor = await running_job(api, controller_on(api))
    key = ("default", "nightly")
    # While the operator is down, a user edits a status time to year 0.
    api.edit_status("nightly", {"startedAt": YEAR_ZERO})
    api.pending.clear()
    reconcile_errors, parse_errors = errors("reconcile"), errors("parse")
    restarted = controller_on(api)
    await list_clusters(restarted)
    await list_jobs(restarted)
    assert key not in restarted.jobs and errors("parse") == parse_errors + 1
    await sweep(restarted)  # a cluster names a job the cache lacks: queued, read
    assert len(restarted.queue) == 1
    await work_until_idle(api, restarted, key)
    assert api.cluster_names() == [executor]  # not taken for gone
    api.set_phase(executor, "Succeeded")  # a cluster event queues it, read again
    await work_until_idle(api, restarted, key)
    assert errors("reconcile") == reconcile_errors
    assert errors("parse") == parse_errors + 3  # once a read: the list, the sweep, the event
    assert api.cluster_names() == [executor]
    assert not restarted.queue._later  # no retry waits
    assert api.jobs[key]["status"]["state"] == "running"
    # Fixed by the user: the watch brings the new version, reconciled as any other.
    api.edit_status("nightly", {"startedAt": None})
    await run_until_quiet(api, restarted)
    assert api.job("nightly").status.state == "completed"
    assert errors("reconcile") == reconcile_errors


async def test_a_version_it_cannot_read_replaces_the_kept_one_and_changes_nothing() -> None:
    api = FakeApi()
    controller = controller_on(api)
    executor = await running_job(api, controller)
    key = ("default", "nightly")
    parse_errors = errors("parse")
    api.edit_status("nightly", {"startedAt": YEAR_ZERO})  # while the operator watches
    api.deliver(controller)
    assert key not in controller.jobs and errors("parse") == parse_errors + 1
    api.remove_cluster(executor)  # a loss now would reschedule the job from a kept copy
    before = len(api.calls)
    await run_until_quiet(api, controller)
    assert api.jobs[key]["status"]["state"] == "running"
    assert api.jobs[key]["status"]["executor"] == executor
    assert api.calls[before:] == ["get jobs"]  # read, found unreadable: no write tried
