"""The kopf handlers: thin adapters that read, ask the core, and write.

Every decision comes from `job_operator.core`; this module only brings the
job as last seen, writes the decided status with a compare-and-swap on its
resourceVersion (re-reading and re-deciding on 409), then posts the events
and deletes the ExecutorCluster the decision names. Only `on.event` handlers
are used, so kopf itself writes nothing to the objects: every API write the
operator makes is one of ours, and all of them are idempotent.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from job_operator import core, metrics, names
from job_operator.kube import PAGE_SIZE, Conflict, Kube, NotFound, lean
from job_operator.models import ExecutorCluster, Job

log = logging.getLogger("job_operator")
CAS_ATTEMPTS = 16
RETRY_DELAY = 2.0
# kopf keeps a task and a queue for each object until its events have stopped for this
# long (default 5 s): in a storm over 10,000 jobs, 10,000 of them.
WORKER_IDLE_SECONDS = 0.2

JobKey = tuple[str, str]


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
    dangling_grace: timedelta = timedelta(seconds=60)
    kubeconfig: str | None = None


class JobCache:
    """Each job as last seen, kept as compact JSON, and of its managedFields only who
    wrote the request annotations (`core.request_ownership`).

    A parsed Job takes about 11 KiB of memory, its JSON 2.5 KiB, and reading it back
    takes ~20 µs: at 10,000 jobs the cache is ~25 MB instead of ~110 MB.
    """

    def __init__(self) -> None:
        self._encoded: dict[JobKey, bytes] = {}

    def remember(self, job: Job) -> None:
        meta = job.metadata
        if meta.managed_fields:
            owners = core.request_ownership(meta.managed_fields)
            job = job.model_copy(
                update={"metadata": meta.model_copy(update={"managed_fields": owners})}
            )
        self._encoded[key_of(job)] = job.model_dump_json(by_alias=True).encode()

    def get(self, key: JobKey) -> Job | None:
        encoded = self._encoded.get(key)
        return None if encoded is None else Job.model_validate_json(encoded)

    def forget(self, key: JobKey) -> None:
        self._encoded.pop(key, None)

    def __len__(self) -> int:
        return len(self._encoded)


class WorkQueue:
    """Jobs waiting to be reconciled, as controller-runtime's workqueue: a job is queued
    at most once however many events name it, and never handed to two workers at once
    (one added while being worked on is queued again when that work ends).

    The kopf handlers only queue keys and return, so what waits in a storm is a key per
    job, not each event's body; and `--workers` reconcile at once. Urgent keys (an
    executor changed: a job to move to running, or a loss) go before the others, so a
    cycle already under way finishes before the next request in a storm starts one.
    """

    def __init__(self) -> None:
        self._urgent: collections.deque[JobKey] = collections.deque()
        self._normal: collections.deque[JobKey] = collections.deque()
        self._entries = asyncio.Semaphore(0)  # one per entry in the two deques
        self._dirty: set[JobKey] = set()  # to be worked on (queued, or after the current work)
        self._dirty_urgent: set[JobKey] = set()
        self._processing: set[JobKey] = set()

    def add(self, key: JobKey, *, urgent: bool = False) -> None:
        if key in self._dirty and (not urgent or key in self._dirty_urgent):
            return
        self._dirty.add(key)
        if urgent:
            self._dirty_urgent.add(key)
        if key not in self._processing:
            self._push(key, urgent)

    def _push(self, key: JobKey, urgent: bool) -> None:
        (self._urgent if urgent else self._normal).append(key)
        self._entries.release()

    async def get(self) -> JobKey:
        while True:
            await self._entries.acquire()
            key = self._urgent.popleft() if self._urgent else self._normal.popleft()
            # A key queued normally and then urgently has two entries: the first wins.
            if key in self._dirty and key not in self._processing:
                self._dirty.discard(key)
                self._dirty_urgent.discard(key)
                self._processing.add(key)
                return key

    def done(self, key: JobKey) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._push(key, key in self._dirty_urgent)

    def busy(self, key: JobKey) -> bool:
        """Queued or being worked on."""
        return key in self._dirty or key in self._processing

    def __len__(self) -> int:
        return len(self._dirty)


@dataclass(frozen=True)
class ExecutorChange:
    """An ExecutorCluster seen changed or deleted, for its job's next reconcile."""

    executor: ExecutorCluster
    deleted: bool
    source: str  # watch or sweep, for the orphan metric


@dataclass
class Runtime:
    """Per-process state shared by the handlers (kept in kopf's memo)."""

    kube: Kube
    config: OperatorConfig
    jobs: JobCache = field(default_factory=JobCache)
    queue: WorkQueue = field(default_factory=WorkQueue)
    # Executor changes not yet followed, in the order seen, per job.
    executor_changes: dict[JobKey, list[ExecutorChange]] = field(default_factory=dict)
    # Jobs whose next reconcile reads the job from the API server, not the cache.
    reread: set[JobKey] = field(default_factory=set)
    timers: dict[JobKey, asyncio.TimerHandle] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # The latest cluster made (or adopted) for each job uid: (attempt, name); and the
    # jobs whose clusters made by an earlier process this one has looked for.
    made: dict[str, tuple[int, str]] = field(default_factory=dict)
    looked_up: set[str] = field(default_factory=set)
    # The resourceVersion each of our status writes replaced: a watch event still
    # carrying it is older than what we know, and is not acted on.
    superseded: dict[JobKey, str] = field(default_factory=dict)
    # Events whose post failed (an API server restarting): posted again by the sweep.
    unposted: list[tuple[Job, core.Event]] = field(default_factory=list)

    def enqueue(self, key: JobKey, *, reread: bool = False) -> None:
        if reread:
            self.reread.add(key)
        self.queue.add(key)

    def observe(self, executor: ExecutorCluster, deleted: bool, source: str) -> None:
        key = (executor.metadata.namespace or "", executor.spec.job_ref.name)
        self.executor_changes.setdefault(key, []).append(ExecutorChange(executor, deleted, source))
        self.queue.add(key, urgent=True)

    def forget(self, key: JobKey, uid: str) -> None:
        self.jobs.forget(key)
        self.looked_up.discard(uid)
        self.made.pop(uid, None)
        self.superseded.pop(key, None)
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def key_of(job: Job) -> JobKey:
    return (job.metadata.namespace or "", job.metadata.name)


# --- writing a decision ---------------------------------------------------------------


async def fresh(rt: Runtime, key: JobKey) -> Job | None:
    """The job as the API server has it now (None if it is gone)."""
    try:
        job = await rt.kube.get_job(*key)
    except NotFound:
        rt.jobs.forget(key)
        return None
    rt.jobs.remember(job)
    return job


async def settle(
    rt: Runtime,
    job: Job,
    decide: Callable[[Job, datetime], core.Decision],
) -> Job | None:
    """Apply `decide` to the job, and dispatch it if that leaves it waiting, in one
    compare-and-swap status write; on 409, re-read and decide again.

    A dispatch creates (or finds) the job's next ExecutorCluster before the write,
    so the status never names a cluster that does not exist, and a crash between
    the two leaves a cluster the next try adopts. A reschedule is therefore one
    status write: pending, the old attempt in history, the fresh executor named.
    Returns the job afterwards; None if it no longer exists.
    """
    key = key_of(job)
    current: Job | None = job
    made: str | None = None  # a cluster created by this call and not yet claimed
    for _ in range(CAS_ATTEMPTS):
        if current is None:
            break
        now = utcnow()
        decision = decide(current, now)
        after = current.model_copy(update={"status": decision.status})
        due = core.dispatch_due(after, now)
        if due == timedelta(0):
            executor = await executor_for_next_attempt(rt, after)
            made = made or executor
            dispatched = core.dispatch(after, executor, now).status
            decision = core.Decision(dispatched, decision.events, decision.delete_executor)
        elif due is not None:
            schedule(rt, key, due.total_seconds())
        if not decision.changes(current):
            break
        try:
            written = await rt.kube.write_job_status(current, decision.status)
        except Conflict:
            metrics.CONFLICTS.inc()
            current = await fresh(rt, key)
            continue
        except NotFound:
            current = None
            break
        rt.jobs.remember(written)
        rt.superseded[key] = current.metadata.resource_version
        record(current, written)
        for event in decision.events:
            if not await rt.kube.post_event(written, event):
                rt.unposted.append((written, event))
        if decision.delete_executor and decision.delete_executor != written.status.executor:
            await rt.kube.delete_executor(key[0], decision.delete_executor)
        current = written
        break
    else:
        raise kopf.TemporaryError(f"job {key[0]}/{key[1]} kept changing; will retry", delay=1)
    if made is not None and (
        current is None
        or (current.status.executor != made and core.dispatch_due(current, utcnow()) is None)
    ):
        if rt.made.get(job.metadata.uid, (0, ""))[1] == made:
            del rt.made[job.metadata.uid]
        await rt.kube.delete_executor(key[0], made)  # made, and no longer wanted
    if current is None:
        rt.jobs.forget(key)
    return current


def record(before: Job, after: Job) -> None:
    """Count what a write did, for the metrics."""
    old, new = before.status, after.status
    if new.reschedule is not None and new.reschedule != old.reschedule:
        metrics.RESCHEDULE_REQUESTS.labels(new.reschedule.outcome).inc()
        observe_latency(after, names.RESCHEDULE_ANNOTATION, new.reschedule.handled_at)
    if new.cancel is not None and new.cancel != old.cancel:
        metrics.CANCEL_REQUESTS.labels(new.cancel.outcome).inc()
    for rejected in new.rejected_requests:
        if rejected not in old.rejected_requests:
            kind = (
                metrics.RESCHEDULE_REQUESTS
                if rejected.annotation == names.RESCHEDULE_ANNOTATION
                else metrics.CANCEL_REQUESTS
            )
            kind.labels("invalid").inc()
    if new.auto_reschedules > old.auto_reschedules:
        metrics.AUTO_RESCHEDULES.labels("rescheduled").inc()
    if new.reason == "ExecutorLostTooOften" and old.reason != new.reason:
        metrics.AUTO_RESCHEDULES.labels("failed").inc()
    if new.attempt > old.attempt:
        metrics.DISPATCHES.inc()


def observe_latency(job: Job, annotation: str, handled_at: str) -> None:
    times = [
        str(entry.get("time"))
        for entry in job.metadata.managed_fields
        if f"f:{annotation}"
        in (entry.get("fieldsV1") or {}).get("f:metadata", {}).get("f:annotations", {})
        and entry.get("time")
    ]
    if times:
        latency = core.parse_time(handled_at) - core.parse_time(max(times))
        metrics.REQUEST_LATENCY.observe(max(latency.total_seconds(), 0.0))


# --- dispatch ----------------------------------------------------------------------


async def executor_for_next_attempt(rt: Runtime, job: Job) -> str:
    """The ExecutorCluster for the job's next attempt: found, or created fresh.

    Clusters this process made are remembered; the first time it dispatches a
    job, it also looks for one made by an earlier process (a crash between the
    creation and the status write) and adopts it.
    """
    uid, attempt = job.metadata.uid, job.status.attempt + 1
    made = rt.made.get(uid)
    if made is not None and made[0] == attempt:
        return made[1]
    if uid not in rt.looked_up:
        found = await rt.kube.list_executors(
            job.metadata.namespace, label_selector=f"{names.JOB_UID_LABEL}={uid}"
        )
        rt.looked_up.add(uid)
        for executor in found:
            if executor.spec.attempt == attempt and not executor.metadata.deletion_timestamp:
                rt.made[uid] = (attempt, executor.metadata.name)
                return executor.metadata.name
    name = core.new_executor_name(str(uuid.uuid4()))
    await rt.kube.create_executor(core.executor_manifest(job, name))
    rt.made[uid] = (attempt, name)
    return name


def schedule(rt: Runtime, key: JobKey, delay: float) -> None:
    """Reconcile the job again, from a fresh read, after `delay` seconds (backoff, retry)."""
    old = rt.timers.pop(key, None)
    if old is not None:
        old.cancel()

    def due() -> None:
        rt.timers.pop(key, None)
        rt.enqueue(key, reread=True)

    rt.timers[key] = asyncio.get_running_loop().call_later(delay, due)


# --- the reconciler -------------------------------------------------------------


async def work(rt: Runtime) -> None:
    """One of `--workers`: reconcile queued jobs, one at a time, forever.

    On an unexpected error the job is tried again soon: kopf does not retry event
    handlers, and the operator must never stop on one job's data or a passing API failure.
    """
    while True:
        key = await rt.queue.get()
        try:
            await reconcile(rt, key)
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
                exc_info=not isinstance(error, kopf.TemporaryError),
            )
            schedule(rt, key, RETRY_DELAY)
        finally:
            rt.queue.done(key)


async def reconcile(rt: Runtime, key: JobKey) -> None:
    """Bring one job up to date: follow its executors' changes in the order seen, then
    handle its requests and dispatch it. The job comes from the cache (each write is a
    compare-and-swap, so a stale copy costs a 409 and a re-read, never a wrong write)."""
    job = None if key in rt.reread else rt.jobs.get(key)
    rt.reread.discard(key)
    if job is None:
        job = await fresh(rt, key)
    changes = rt.executor_changes.get(key, [])
    while changes:  # removed once followed: on an error they are followed at the retry
        job = await follow_change(rt, job, changes[0])
        changes.pop(0)
    if rt.executor_changes.get(key) == []:
        del rt.executor_changes[key]
    if job is not None:
        await settle(rt, job, core.reconcile)


async def follow_change(rt: Runtime, job: Job | None, change: ExecutorChange) -> Job | None:
    """An ExecutorCluster changed or vanished: the job follows, or the cluster goes."""
    executor = change.executor
    name = executor.metadata.name
    observed = None if change.deleted else executor

    def follow(current: Job, now: datetime) -> core.Decision:
        return core.follow_executor(current, observed, name, rt.config.policy, now)

    if job is not None and job.metadata.uid == executor.spec.job_ref.uid:
        before = job.status
        job = await settle(rt, job, follow)
        lost = change.deleted or executor.status.phase == "Terminated"
        if (
            lost
            and job is not None
            and before.executor == name
            and not before.terminal
            and job.status.executor != name
        ):
            metrics.ORPHANS_FOUND.labels(change.source).inc()
    if change.deleted:
        if rt.made.get(executor.spec.job_ref.uid, (0, ""))[1] == name:
            del rt.made[executor.spec.job_ref.uid]
    else:
        await delete_if_dangling(rt, executor, job)
    return job


async def delete_if_dangling(rt: Runtime, executor: ExecutorCluster, job: Job | None) -> None:
    now = utcnow()
    grace = rt.config.dangling_grace
    if not core.is_dangling(executor, job, grace, now):
        return
    key = (executor.metadata.namespace or "", executor.spec.job_ref.name)
    # Confirm against the API server, not a cache, before deleting anything.
    job = await fresh(rt, key)
    if core.is_dangling(executor, job, grace, now):
        log.info("deleting dangling %s/%s", key[0], executor.metadata.name)
        if await rt.kube.delete_executor(key[0], executor.metadata.name):
            metrics.DANGLING_DELETED.inc()


async def sweep(rt: Runtime) -> None:
    """Find what the watches cannot: losses while the operator was down, dangling clusters.

    Jobs are listed before clusters, so a job dispatched in between has its
    cluster in the second list (clusters are created before the status names them).
    Both are read a page at a time and only a little of each kept, so memory stays small.
    """
    unposted, rt.unposted = rt.unposted, []
    for job, event in unposted:
        if not await rt.kube.post_event(job, event):
            rt.unposted.append((job, event))
    namespaces: list[str | None] = list(rt.config.namespaces) or [None]
    for namespace in namespaces:
        # (namespace, executor) -> (job name, job uid, attempt): a few strings per job, not
        # the job (a parsed Job is ~11 KiB; 10,000 of them were most of a sweep's memory).
        holding: dict[tuple[str, str], tuple[str, str, int]] = {}
        async for page in rt.kube.job_pages(namespace):
            now = utcnow()
            for job in page:
                current = job.status.executor
                if current and not job.status.terminal:
                    holding[(job.metadata.namespace or "", current)] = (
                        job.metadata.name,
                        job.metadata.uid,
                        job.status.attempt,
                    )
                if core.dispatch_due(job, now) is not None or core.reconcile(job, now).changes(job):
                    # Requests waiting (e.g. made while the operator was down) are queued
                    # page by page, before the whole list is read: at start-up, in seconds.
                    rt.enqueue(key_of(job), reread=True)  # lists age fast
            await asyncio.sleep(0)  # let the handlers run between pages
        async for executors in rt.kube.executor_pages(namespace):
            for executor in executors:
                if executor.metadata.deletion_timestamp:
                    continue
                holding.pop((executor.metadata.namespace or "", executor.metadata.name), None)
                owner = (executor.metadata.namespace or "", executor.spec.job_ref.name)
                if rt.queue.busy(owner):
                    continue  # being reconciled now: that decides, not a list's old view
                await delete_if_dangling(rt, executor, rt.jobs.get(owner))
        for (job_namespace, lost), (job_name, job_uid, attempt) in holding.items():
            gone = ExecutorCluster.model_validate(
                {
                    "metadata": {"name": lost, "namespace": job_namespace},
                    "spec": {
                        "jobRef": {"name": job_name, "uid": job_uid},
                        "attempt": max(attempt, 1),
                    },
                }
            )
            rt.observe(gone, deleted=True, source="sweep")


async def repair_events(rt: Runtime) -> None:
    """Post the events of recently handled requests that a crash kept from being posted.

    Runs at start-up, before any watch: a request handled just before a crash
    may have its status written and its event not yet posted.
    """
    since = utcnow() - rt.config.event_repair_window
    namespaces: list[str | None] = list(rt.config.namespaces) or [None]
    for namespace in namespaces:
        posted: set[str] | None = None
        async for page in rt.kube.job_pages(namespace):
            for job in page:
                for event in core.events(job.status, since=since):
                    if posted is None:  # read only when some job has recent requests
                        posted = await rt.kube.event_names(namespace)
                    if core.event_name(job, event) not in posted:
                        log.info(
                            "posting the missed %s event of %s/%s",
                            event.reason,
                            job.metadata.namespace,
                            job.metadata.name,
                        )
                        if not await rt.kube.post_event(job, event):
                            rt.unposted.append((job, event))


async def sweep_forever(rt: Runtime) -> None:
    while True:
        try:
            await sweep(rt)
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.ERRORS.labels("sweep").inc()
            log.exception("sweep failed; retrying at the next interval")
        await asyncio.sleep(rt.config.sweep_interval)


# --- kopf wiring -------------------------------------------------------------------


class NoDiffBase(kopf.DiffBaseStorage):
    """Keeps and builds no diff base: only on.event handlers exist, which take no diff.

    kopf's own storage deep-copies every event's body to build one (5% of the CPU).
    """

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return kopf.BodyEssence()

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def make_registry() -> kopf.OperatorRegistry:
    """The operator's handlers, in a registry of their own (nothing global)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """Credentials from the service account in a pod, else from the kubeconfig."""
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
            **kwargs
        ) or kopf.login_with_kubeconfig(**kwargs)
        return info

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        rt: Runtime = memo["runtime"]
        settings.posting.enabled = False  # our events are our own; no log spam as events
        # The handlers only queue work and return (see WorkQueue): kopf's per-object
        # workers need no limit, and `--workers` sizes the operator's own pool.
        settings.queueing.worker_limit = None
        settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
        settings.watching.chunk_size = PAGE_SIZE  # list at start a page at a time, too
        # Only on.event handlers: kopf keeps no progress. Should a stateful handler ever
        # be added, its records stay under the operator's own prefix.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
        settings.persistence.diffbase_storage = NoDiffBase()
        settings.persistence.finalizer = f"{names.GROUP}/finalizer"
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        # Given namespaces (by name), kopf need not list namespaces nor watch CRDs, both
        # cluster-scoped: a Role in those namespaces is then all the operator needs
        # (deploy/overlays/namespaced; tests/integration/test_rbac.py proves it).
        settings.scanning.disabled = bool(rt.config.namespaces) and not any(
            set("*?[!,") & set(ns) for ns in rt.config.namespaces
        )
        try:
            await repair_events(rt)
        except Exception as error:  # e.g. the CRDs not installed yet: carry on, say so
            metrics.ERRORS.labels("repair").inc()
            log.warning("could not check for missed events at start-up: %s", error)
        metrics.QUEUE_DEPTH.set_function(lambda: len(rt.queue))
        for _worker in range(rt.config.workers):
            rt.spawn(work(rt))
        rt.spawn(sweep_forever(rt))

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        rt: Runtime = memo["runtime"]
        for timer in rt.timers.values():
            timer.cancel()
        for task in list(rt.tasks):
            task.cancel()

    @kopf.on.event(names.GROUP, names.VERSION, names.JOB_PLURAL, registry=registry)
    async def job_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        rt: Runtime = memo["runtime"]
        body = event.get("object") or {}
        metadata = body.get("metadata") or {}
        raw_key = (metadata.get("namespace") or "", metadata.get("name") or "")
        deleted = event.get("type") == "DELETED"
        if not deleted and rt.superseded.get(raw_key) == metadata.get("resourceVersion"):
            return  # our own write replaced this version; its event follows (not parsed)
        try:
            job = Job.model_validate(body)
        except ValueError as error:
            metrics.ERRORS.labels("parse").inc()
            log.warning("ignoring a Job the operator cannot read: %s", error)
            return
        key = key_of(job)
        if deleted:
            rt.forget(key, job.metadata.uid)
            for executor in await rt.kube.list_executors(
                key[0], label_selector=f"{names.JOB_UID_LABEL}={job.metadata.uid}"
            ):
                await rt.kube.delete_executor(key[0], executor.metadata.name)
            return
        rt.jobs.remember(job)
        rt.enqueue(key)

    @kopf.on.event(names.GROUP, names.VERSION, names.EXECUTOR_PLURAL, registry=registry)
    async def executor_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        rt: Runtime = memo["runtime"]
        try:  # kept until followed: without managedFields, most of its bytes
            executor = ExecutorCluster.model_validate(lean(dict(event.get("object") or {})))
        except ValueError as error:
            metrics.ERRORS.labels("parse").inc()
            log.warning("ignoring an ExecutorCluster the operator cannot read: %s", error)
            return
        key = (executor.metadata.namespace or "", executor.spec.job_ref.name)
        deleted = event.get("type") == "DELETED"
        if core.executor_event_is_quiet(
            executor, rt.jobs.get(key), rt.config.dangling_grace, utcnow(), deleted=deleted
        ):
            return
        rt.observe(executor, deleted, "watch")

    return registry


async def run_operator(
    config: OperatorConfig,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
) -> None:
    """Run the operator until `stop_flag` is set (or forever)."""
    async with Kube.connect(config.kubeconfig) as kube:
        runtime = Runtime(kube=kube, config=config)
        await kopf.operator(
            registry=make_registry(),
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            memo=kopf.Memo(runtime=runtime),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
