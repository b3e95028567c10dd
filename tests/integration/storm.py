"""Storms of reschedule requests over many jobs, for the resilience tests; and what
watches them: the clusters' ledger during the storm, the events after it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from job_operator import names
from job_operator.kube import Kube as Api
from job_operator.kube import NotFound, retry_transient
from tests.helpers import Kube, async_wait_for
from tests.integration.conftest import HANG
from tests.invariants import ClusterLedger, Snapshot, late_request_events


@dataclass
class Storm:
    """Jobs in one namespace and the tokens sent to each, in order."""

    kube: Kube
    api: Api
    namespace: str
    names: list[str] = field(default_factory=list)
    tokens: dict[str, list[str]] = field(default_factory=dict)

    def create(self, count: int, *, hang_share: float = 0.75) -> None:
        """Create `count` jobs in one apply: most stay running, the rest complete."""
        docs = []
        hanging = int(count * hang_share)
        for i in range(count):
            name = f"job-{i:04d}"
            self.names.append(name)
            self.tokens[name] = []
            docs.append(
                {
                    "apiVersion": names.API_VERSION,
                    "kind": names.JOB_KIND,
                    "metadata": {
                        "name": name,
                        "namespace": self.namespace,
                        "annotations": HANG if i < hanging else {},
                    },
                    "spec": {"type": "storm", "input": {"i": i}},
                }
            )
        self.kube.kubectl_run("apply", "-f", "-", input=yaml.safe_dump_all(docs), timeout=300)

    async def list_custom(self, plural: str) -> list[dict[str, Any]]:
        """List one kind in the namespace, through a restarting API server's 429s and 503s."""
        listed = await retry_transient(
            lambda: self.api.custom.list_namespaced_custom_object(
                names.GROUP, names.VERSION, self.namespace, plural
            )
        )
        items: list[dict[str, Any]] = listed["items"]
        return items

    async def statuses(self) -> dict[str, dict[str, Any]]:
        jobs = await self.list_custom(names.JOB_PLURAL)
        return {j["metadata"]["name"]: j.get("status") or {} for j in jobs}

    async def wait_all(
        self, predicate: Callable[[dict[str, Any]], bool], description: str, timeout: float = 180.0
    ) -> None:
        async def check() -> bool:
            statuses = await self.statuses()
            return all(predicate(statuses.get(n, {})) for n in self.names)

        await async_wait_for(check, timeout=timeout, interval=0.5, description=description)

    async def settle_dispatch(self) -> None:
        await self.wait_all(
            lambda s: s.get("state") in ("running", "completed"), "every job running or completed"
        )

    async def request_round(self, label: str, concurrency: int = 32) -> None:
        """Send every job one new token (concurrently), without waiting for handling."""
        gate = asyncio.Semaphore(concurrency)

        async def send(name: str) -> None:
            token = f"{label}-{name}"
            self.tokens[name].append(token)
            async with gate:
                await async_wait_for(
                    lambda: self.annotate(name, token),
                    timeout=60,
                    interval=0.2,
                    description=f"{name} annotated",
                    ignore=(NotFound,),
                )

        await asyncio.gather(*(send(n) for n in self.names))

    async def annotate(self, name: str, token: str) -> bool:
        """Write a token. An API server that is starting answers 404 for custom resources
        until its CRDs are loaded: the jobs exist, so the caller tries again."""
        await self.api.annotate_job(
            self.namespace, name, {names.RESCHEDULE_ANNOTATION: token}, "storm"
        )
        return True

    async def wait_handled(self, timeout: float = 300.0) -> None:
        """Wait until every job has its last token recorded as handled."""

        async def check() -> bool:
            statuses = await self.statuses()
            return all(
                (statuses.get(n, {}).get("reschedule") or {}).get("request") == self.tokens[n][-1]
                for n in self.names
            )

        await async_wait_for(
            check, timeout=timeout, interval=0.5, description="every job's last token handled"
        )

    async def snapshot(self) -> Snapshot:
        jobs = await self.list_custom(names.JOB_PLURAL)
        executors = await self.list_custom(names.EXECUTOR_PLURAL)
        events, _ = await self.events()
        return Snapshot(jobs=jobs, executors=executors, events=events)

    async def events(self) -> tuple[list[dict[str, Any]], str]:
        """The namespace's events, and the list's resourceVersion."""
        listed = await retry_transient(lambda: self.api.core.list_namespaced_event(self.namespace))
        items = [self.api.api.sanitize_for_serialization(e) for e in listed.items]
        return items, listed.metadata.resource_version

    async def late_request_events(self, settled: Snapshot, grace: float) -> list[str]:
        """Request events that appear within `grace` seconds after `settled`, when every
        request had its one event: a watch that ends at the first such event, or at the
        deadline; then a last listing, for what came before the watch started (the test
        server's event watch starts from now, whatever resourceVersion it is given)."""
        events, resource_version = await self.events()
        late = late_request_events(settled.events, events)
        if late:
            return late
        # A raw watch (the response, unread): the test server's event store takes
        # `watch=true` only as written, not the client's `True`.
        core: Any = self.api.core
        response: aiohttp.ClientResponse = await core.list_namespaced_event(
            self.namespace,
            watch="true",
            resource_version=resource_version,
            timeout_seconds=max(int(grace), 1),
            _preload_content=False,
        )
        try:
            async with asyncio.timeout(grace + 30):
                async for line in response.content:
                    change = json.loads(line)
                    if change.get("type") in ("ADDED", "MODIFIED"):
                        late += late_request_events(settled.events, [change["object"]])
                    if late:
                        return late
        finally:
            response.release()
        events, _ = await self.events()
        return late_request_events(settled.events, events)


class AuditTail:
    """The audit log's events as the API server appends them (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        whole = data[: data.rfind(b"\n") + 1]
        self.offset += len(whole)
        return [json.loads(line) for line in whole.splitlines() if line.strip()]


@contextlib.asynccontextmanager
async def cluster_ledger(
    kube: Kube, namespace: str, interval: float = 0.2
) -> AsyncIterator[ClusterLedger | None]:
    """Follow the namespace's ExecutorClusters through the audit log while the body runs
    (from now on), checking `ClusterLedger`'s rule at every creation as it is logged.
    None on a cluster other than the suite's own (no audit log to read)."""
    control_plane = kube.control_plane
    if control_plane is None or control_plane.audit_log is None:
        yield None
        return
    tail = AuditTail(control_plane.audit_log)
    ledger = ClusterLedger(namespace)

    async def follow() -> None:
        while True:
            ledger.follow(tail.read())
            await asyncio.sleep(interval)

    task = asyncio.create_task(follow())
    try:
        yield ledger
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        ledger.follow(tail.read())


async def during(work: Awaitable[None], chaos: Callable[[], Awaitable[None]]) -> None:
    """Run `work` and, concurrently, `chaos`; both must finish."""
    await asyncio.gather(work, chaos())
