"""Follows every Job with one watch stream per namespace, and times the requests.

For each request the benchmark writes (a fresh token in the reschedule annotation) it
records when the token showed up in `status.reschedule.request` (as the watch delivered
it), the operator's own `handledAt`, when the job was on a new ExecutorCluster
(redispatched) and when it was `running` there (the full cycle). No job is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.client import Api, ApiError, WatchExpired
from job_operator import names
from job_operator.models import parse_time

log = logging.getLogger("bench.tracker")

Key = tuple[str, str]  # (namespace, name)


def jobs_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{namespace}/{names.JOB_PLURAL}"
    return f"{base}/{name}" if name else base


def epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return parse_time(stamp).timestamp()


@dataclass(frozen=True)
class JobView:
    """The few fields of a Job the benchmark follows."""

    resource_version: str
    state: str | None
    executor: str | None
    attempt: int
    reschedule_request: str | None
    reschedule_outcome: str | None
    handled_at: str | None

    @classmethod
    def of(cls, obj: dict[str, Any]) -> JobView:
        status = obj.get("status") or {}
        record = status.get("reschedule") or {}
        return cls(
            resource_version=str((obj.get("metadata") or {}).get("resourceVersion") or ""),
            state=status.get("state"),
            executor=status.get("executor"),
            attempt=int(status.get("attempt") or 0),
            reschedule_request=record.get("request"),
            reschedule_outcome=record.get("outcome"),
            handled_at=record.get("handledAt"),
        )

    @property
    def running(self) -> bool:
        return self.state == "running" and bool(self.executor)


@dataclass
class Request:
    """One reschedule request and its timeline (wall-clock seconds)."""

    key: Key
    token: str
    prev_executor: str | None
    prev_attempt: int
    batch: Batch
    scheduled: float = 0.0  # when an open-loop sender meant to send it
    sent: float = 0.0
    acked: float | None = None  # the annotation PATCH answered
    recorded: float | None = None  # the watch showed the token in status.reschedule
    handled_at: float | None = None  # the operator's handledAt
    outcome: str | None = None
    redispatched: float | None = None  # on a new ExecutorCluster
    running: float | None = None  # running on the new ExecutorCluster
    error: str | None = None

    @property
    def latency(self) -> float | None:
        return None if self.recorded is None else self.recorded - self.sent

    @property
    def decision_latency(self) -> float | None:
        return None if self.handled_at is None else self.handled_at - self.sent

    @property
    def cycle(self) -> float | None:
        return None if self.running is None else self.running - self.sent


@dataclass
class Batch:
    """Requests measured together; events fire when all are recorded / running."""

    name: str
    requests: list[Request] = field(default_factory=list)
    expected: int = 0
    recorded_count: int = 0
    redispatched_count: int = 0
    running_count: int = 0
    failed_count: int = 0
    all_recorded: asyncio.Event = field(default_factory=asyncio.Event)
    all_redispatched: asyncio.Event = field(default_factory=asyncio.Event)
    all_running: asyncio.Event = field(default_factory=asyncio.Event)
    last_recorded: float = 0.0
    last_redispatched: float = 0.0
    last_running: float = 0.0

    def _check(self) -> None:
        done = self.failed_count
        if self.recorded_count + done >= self.expected:
            self.all_recorded.set()
        if self.redispatched_count + done >= self.expected:
            self.all_redispatched.set()
        if self.running_count + done >= self.expected:
            self.all_running.set()

    def sealed(self, expected: int) -> None:
        """All requests are registered: `expected` of them."""
        self.expected = expected
        self._check()


@dataclass
class _Waiter:
    remaining: set[Key]
    predicate: Callable[[JobView], bool]
    done: asyncio.Event = field(default_factory=asyncio.Event)


class JobTracker:
    """Watches the Jobs of some namespaces; times requests; waits for job states."""

    def __init__(self, api: Api, namespaces: Iterable[str]) -> None:
        self.api = api
        self.namespaces = list(namespaces)
        self.views: dict[Key, JobView] = {}
        self.pending: dict[Key, Request] = {}
        self.waiters: list[_Waiter] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.synced: dict[str, asyncio.Event] = {ns: asyncio.Event() for ns in self.namespaces}
        self.events_seen = 0

    async def start(self) -> None:
        for namespace in self.namespaces:
            task = asyncio.create_task(self._follow(namespace), name=f"watch jobs {namespace}")
            self.tasks.append(task)
        await asyncio.gather(*(event.wait() for event in self.synced.values()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()

    async def _follow(self, namespace: str) -> None:
        resource_version = ""
        while True:
            try:
                if not resource_version:
                    listed = await self.api.request(
                        "GET", jobs_path(namespace), request_timeout=300
                    )
                    now = time.time()
                    for item in listed.get("items") or []:
                        self._observe(namespace, item, now)
                    resource_version = str(listed["metadata"]["resourceVersion"])
                    self.synced[namespace].set()
                async for event in self.api.watch(jobs_path(namespace), resource_version):
                    obj = event.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        resource_version = str(rv)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._observe(namespace, obj, time.time())
                    elif event.get("type") == "DELETED":
                        name = (obj.get("metadata") or {}).get("name")
                        self.views.pop((namespace, str(name)), None)
            except asyncio.CancelledError:
                raise
            except WatchExpired:
                resource_version = ""
            except (ApiError, OSError, TimeoutError, ValueError) as error:
                log.warning("watch of jobs in %s: %s; again in 1 s", namespace, error)
                await asyncio.sleep(1)
            except Exception as error:  # aiohttp's payload errors and the like
                log.warning("watch of jobs in %s broke: %r; again in 1 s", namespace, error)
                await asyncio.sleep(1)

    def _observe(self, namespace: str, obj: dict[str, Any], now: float) -> None:
        self.events_seen += 1
        name = str((obj.get("metadata") or {}).get("name"))
        key = (namespace, name)
        view = JobView.of(obj)
        self.views[key] = view
        request = self.pending.get(key)
        if request is not None:
            self._advance(request, view, now)
        for waiter in self.waiters:
            if key in waiter.remaining and waiter.predicate(view):
                waiter.remaining.discard(key)
                if not waiter.remaining:
                    waiter.done.set()

    def _advance(self, request: Request, view: JobView, now: float) -> None:
        batch = request.batch
        if request.recorded is None and view.reschedule_request == request.token:
            request.recorded = now
            request.handled_at = epoch(view.handled_at)
            request.outcome = view.reschedule_outcome
            batch.recorded_count += 1
            batch.last_recorded = max(batch.last_recorded, now)
        if request.recorded is None:
            return
        fresh = bool(view.executor) and view.executor != request.prev_executor
        if request.redispatched is None and fresh and view.attempt > request.prev_attempt:
            request.redispatched = now
            batch.redispatched_count += 1
            batch.last_redispatched = max(batch.last_redispatched, now)
        if request.running is None and request.redispatched is not None and view.running:
            request.running = now
            batch.running_count += 1
            batch.last_running = max(batch.last_running, now)
            self.pending.pop(request.key, None)
        batch._check()

    # --- requests ---------------------------------------------------------------------

    def idle(self, key: Key) -> bool:
        """Running, with no request of ours in flight: ready for a new request."""
        view = self.views.get(key)
        return view is not None and view.running and key not in self.pending

    def register(self, key: Key, token: str, batch: Batch) -> Request:
        view = self.views.get(key)
        request = Request(
            key=key,
            token=token,
            prev_executor=view.executor if view else None,
            prev_attempt=view.attempt if view else 0,
            batch=batch,
        )
        batch.requests.append(request)
        self.pending[key] = request
        return request

    def failed(self, request: Request, error: str) -> None:
        request.error = error
        self.pending.pop(request.key, None)
        request.batch.failed_count += 1
        request.batch._check()

    def abandon(self, batch: Batch) -> None:
        """Stop following a batch's unfinished requests (after a timeout)."""
        for request in batch.requests:
            if self.pending.get(request.key) is request:
                del self.pending[request.key]

    # --- waiting for job states -------------------------------------------------------

    async def wait_jobs(
        self,
        keys: Iterable[Key],
        predicate: Callable[[JobView], bool],
        timeout: float,
    ) -> set[Key]:
        """Wait until every job satisfies `predicate`; returns those that did not in time."""
        remaining = {k for k in keys if not ((v := self.views.get(k)) and predicate(v))}
        if not remaining:
            return set()
        waiter = _Waiter(remaining, predicate)
        self.waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.done.wait(), timeout)
        finally:
            self.waiters.remove(waiter)
        return set(waiter.remaining)
