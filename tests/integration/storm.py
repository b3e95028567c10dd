"""Storms of reschedule requests over many jobs, for the resilience tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from job_operator import names
from job_operator.kube import Kube as Api
from job_operator.kube import NotFound, retry_transient
from tests.helpers import Kube, async_wait_for
from tests.integration.conftest import HANG
from tests.invariants import Snapshot


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
        events = await retry_transient(lambda: self.api.core.list_namespaced_event(self.namespace))
        return Snapshot(
            jobs=jobs,
            executors=executors,
            events=[self.api.api.sanitize_for_serialization(e) for e in events.items],
        )


async def during(work: Awaitable[None], chaos: Callable[[], Awaitable[None]]) -> None:
    """Run `work` and, concurrently, `chaos`; both must finish."""
    await asyncio.gather(work, chaos())
