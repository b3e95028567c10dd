"""The controller: reconciles one job at a time by carrying out what `core.plan` decides.

Level-triggered, as controller-runtime's: watch events only update the caches and queue
the job's key; a reconcile reads the job and its ExecutorClusters as they are now (from
the caches), asks `core.plan` for the whole effect and carries it out: create the next
cluster, compare-and-swap the status on the job's resourceVersion, post the events,
delete the clusters the job no longer names. On a 409 it reads the job again and plans
again. Nothing about the past is kept: what a reconcile needs is derived from the objects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from job_operator import core, metrics, names
from job_operator.cache import ClusterCache, JobCache, key_of, owner_of
from job_operator.kube import Conflict, NotFound, lean, parsed
from job_operator.models import ExecutorCluster, Job, JobStatus, parse_time, unreadable
from job_operator.workqueue import JobKey, WorkQueue

log = logging.getLogger("job_operator")
CAS_ATTEMPTS = 16
RETRY_DELAY = 2.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class OperatorConfig:
    """Settings of one operator process (the CLI's `run` flags)."""

    namespaces: list[str] = field(default_factory=list)  # empty: all namespaces
    policy: core.Policy = field(default_factory=core.Policy)
    sweep_interval: float = 60.0
    event_repair_window: timedelta = timedelta(minutes=30)
    workers: int = 100
    kubeconfig: str | None = None


class Api(Protocol):
    """The API calls the controller makes: `kube.Kube`, or the in-memory double."""

    async def get_job(self, namespace: str, name: str) -> Job: ...

    async def write_job_status(self, job: Job, status: JobStatus) -> Job: ...

    async def create_executor(self, manifest: dict[str, Any]) -> ExecutorCluster: ...

    async def delete_executor(self, namespace: str, name: str) -> bool: ...

    async def post_event(self, job: Job, event: core.Event) -> bool: ...

    def job_pages(self, namespace: str | None = None) -> AsyncIterator[list[Job]]: ...

    def executor_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[ExecutorCluster]]: ...

    async def event_names(self, namespace: str | None) -> set[str]: ...


class KeptChanging(Exception):
    """A job changed under every one of CAS_ATTEMPTS writes; it is tried again later."""


class Unreadable(Exception):
    """The job as stored holds what the models refuse (a status time in year 0, which the
    API server accepts). It is left alone, as the watch and the lists leave it: not gone
    (its clusters stay), not retried; the user's fix is a new version the watch brings."""


class Controller:
    """The caches, the work queue, and the reconcile of one job."""

    def __init__(self, api: Api, config: OperatorConfig) -> None:
        self.api = api
        self.config = config
        self.jobs = JobCache()
        self.clusters = ClusterCache()
        self.queue = WorkQueue()
        # Events whose post failed (an API server restarting): posted again by the sweep.
        self.unposted: list[tuple[Job, core.Event]] = []

    # --- what the watches report ------------------------------------------------------

    def job_event(self, kind: str | None, body: dict[str, Any]) -> None:
        """A watch event of a Job (`kind`: ADDED, MODIFIED, DELETED; None from kopf's
        first list): only the cache and the queue change."""
        metadata = body.get("metadata") or {}
        key = (metadata.get("namespace") or "", metadata.get("name") or "")
        if kind == "DELETED":
            self.job_deleted(key)
            return
        if not self.jobs.is_new(key, str(metadata.get("resourceVersion") or "")):
            return  # our own write (or older): the cache has it already; not parsed
        job = parsed(Job, body)
        if job is None:
            self.jobs.forget(key)  # the version kept is not the job any more
            return
        self.job_seen(job)

    def cluster_event(self, kind: str | None, body: dict[str, Any]) -> None:
        """A watch event of an ExecutorCluster, kept without managedFields (most of its
        bytes)."""
        cluster = parsed(ExecutorCluster, lean(body))
        if cluster is None:
            return
        if kind == "DELETED":
            self.cluster_deleted(cluster)
        else:
            self.cluster_seen(cluster)

    def job_seen(self, job: Job) -> None:
        if self.jobs.remember(job):
            self.queue.add(key_of(job))

    def job_deleted(self, key: JobKey) -> None:
        self.jobs.forget(key)
        self.queue.add(key)  # its clusters go

    def cluster_seen(self, cluster: ExecutorCluster) -> None:
        if self.clusters.remember(cluster, time.monotonic()):
            self.queue.add(owner_of(cluster), urgent=True)

    def cluster_deleted(self, cluster: ExecutorCluster) -> None:
        if self.clusters.forget(owner_of(cluster), cluster.metadata.name, time.monotonic()):
            self.queue.add(owner_of(cluster), urgent=True)

    # --- the reconcile ----------------------------------------------------------------

    async def work(self) -> None:
        """One of `--workers`: reconcile queued jobs, one at a time, forever.

        On an unexpected error the job is tried again soon: the operator must never
        stop on one job's data or a passing API failure.
        """
        while True:
            key = await self.queue.get()
            try:
                await self.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                metrics.ERRORS.labels("reconcile").inc()
                log.error(
                    "reconciling %s/%s failed (%s); retrying in %.0fs",
                    key[0],
                    key[1],
                    error,
                    RETRY_DELAY,
                    exc_info=not isinstance(error, KeptChanging),
                )
                self.queue.add_after(key, RETRY_DELAY)
            finally:
                self.queue.done(key)

    async def reconcile(self, key: JobKey) -> None:
        """Bring one job and its clusters up to date.

        The job comes from the cache: each write is a compare-and-swap, so a stale copy
        costs a 409 and a read, never a wrong write. Deletions planned without a write
        (clusters the job has left) are made only on a job read just before. A job read
        unreadable is left alone (`Unreadable`).
        """
        job = self.jobs.get(key)
        read = job is None
        try:
            if job is None:
                job = await self.read(key)
            for _ in range(CAS_ATTEMPTS):
                if job is None:
                    await self.carry_out_gone(key, core.plan_gone(self.clusters.of(key)))
                    return
                plan = core.plan(job, self.clusters.of(key), utcnow(), self.config.policy)
                if plan.delete and plan.status is None and not read:
                    job, read = await self.read(key), True
                    continue
                try:
                    await self.carry_out(job, plan)
                except Conflict:
                    metrics.CONFLICTS.inc()
                    job, read = await self.read(key), True
                    continue
                except NotFound:
                    job = None
                    continue
                if plan.requeue_after is not None:
                    self.queue.add_after(key, plan.requeue_after.total_seconds())
                return
        except Unreadable:
            return  # counted and logged by `read`
        raise KeptChanging(f"job {key[0]}/{key[1]} kept changing; will retry")

    async def read(self, key: JobKey) -> Job | None:
        """The job as the API server has it now (None if it is gone).

        One the models refuse raises Unreadable, counted as a parse error as the watch
        and the lists count it; the cache forgets the version it kept, which is not the
        job any more (a sweep reads it again, a fixed version comes in as new).
        """
        try:
            job = await self.api.get_job(*key)
        except NotFound:
            self.jobs.forget(key)
            return None
        except ValidationError as error:
            self.jobs.forget(key)
            metrics.ERRORS.labels("parse").inc()
            log.warning("leaving job %s/%s alone: %s", key[0], key[1], unreadable(error))
            raise Unreadable(*key) from error
        self.jobs.remember(job)
        return job

    async def carry_out(self, job: Job, plan: core.Plan) -> None:
        """Create, write (compare-and-swap: Conflict if the job changed), post, delete."""
        key = key_of(job)
        if plan.create is not None:
            try:
                created = await self.api.create_executor(plan.create)
            except Conflict:  # an earlier try of this very create landed: the name is fresh
                created = ExecutorCluster.model_validate(plan.create)
            self.clusters.remember(created, time.monotonic())
        if plan.status is not None:
            job = await self.api.write_job_status(job, plan.status)
            self.jobs.remember(job)
            for event in plan.events:
                if not await self.api.post_event(job, event):
                    self.unposted.append((job, event))
        await self.delete(key, plan.delete)
        record(job, plan)

    async def carry_out_gone(self, key: JobKey, plan: core.Plan) -> None:
        """Delete the clusters of a job that is gone (`core.plan_gone`)."""
        for name in plan.delete:
            log.info("deleting %s/%s: its job is gone", key[0], name)
        await self.delete(key, plan.delete)
        record(None, plan)

    async def delete(self, key: JobKey, cluster_names: tuple[str, ...]) -> None:
        """Delete clusters of the job `key`; the cache forgets them (a late event too)."""
        for name in cluster_names:
            await self.api.delete_executor(key[0], name)
            self.clusters.forget(key, name, time.monotonic())


def record(job: Job | None, plan: core.Plan) -> None:
    """Count what a carried-out plan did, for the metrics (`job`: as written, if any)."""
    for outcome in plan.outcomes:
        if outcome.kind == "reschedule":
            metrics.RESCHEDULE_REQUESTS.labels(outcome.value).inc()
            if job is not None and job.status.reschedule is not None:
                observe_latency(job, job.status.reschedule.handled_at)
        elif outcome.kind == "cancel":
            metrics.CANCEL_REQUESTS.labels(outcome.value).inc()
        elif outcome.kind == "auto_reschedule":
            metrics.AUTO_RESCHEDULES.labels(outcome.value).inc()
        elif outcome.kind == "dispatch":
            metrics.DISPATCHES.inc()
        elif outcome.kind == "orphan":
            metrics.ORPHANS_FOUND.inc()
        elif outcome.kind == "dangling_deleted":
            metrics.DANGLING_DELETED.inc()


def observe_latency(job: Job, handled_at: datetime) -> None:
    """From the reschedule annotation's write (managedFields time) to its handling."""
    times = [
        parse_time(entry.get("time"))
        for entry in job.metadata.managed_fields
        if f"f:{names.RESCHEDULE_ANNOTATION}"
        in (entry.get("fieldsV1") or {}).get("f:metadata", {}).get("f:annotations", {})
        and entry.get("time")
    ]
    if times:
        latency = handled_at - max(times)
        metrics.REQUEST_LATENCY.observe(max(latency.total_seconds(), 0.0))
