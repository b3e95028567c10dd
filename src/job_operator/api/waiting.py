"""One watch of all Jobs, with the server's own (read-only) identity: it finds a job by
its uid, and tells each waiting request when the operator has recorded its token.

Why one shared watch: a job's uid is not a field or label selector of custom resources,
so finding one by uid needs a list; a list per request would read every job each time.
And 1,000 waiting requests as 1,000 watches would be 1,000 streams on the API server.
Instead the server lists and watches Jobs once (as an informer does) and keeps only
uid -> (namespace, name) — a few hundred bytes per job, a few MB at 10,000 jobs — and
hands each event about a job somebody waits on to those waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from kubernetes_asyncio import watch

from job_operator import names
from job_operator.api import plan
from job_operator.kube import PAGE_SIZE, Kube, retry_transient
from job_operator.models import Job

log = logging.getLogger(__name__)
WATCH_SECONDS: Final = 300
RELIST_DELAY_SECONDS: Final = 1.0

JobKey = tuple[str, str]  # (namespace, name)


class TooManyWaiting(Exception):
    """The bound of waiting requests is reached (HTTP 429)."""


class JobGone(Exception):
    """The job was deleted while a request waited on it."""


@dataclass(eq=False)
class Waiter:
    """One request waiting for the operator to record `token` on the job `uid`."""

    token: str
    uid: str = ""
    done: asyncio.Future[Job] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def offer(self, job: Job) -> None:
        """Resolve with `job` if it records the token (or refused it)."""
        if self.done.done() or (self.uid and job.metadata.uid != self.uid):
            return
        try:
            record = plan.handled(job, self.token)
        except plan.Refused as refused:
            self.done.set_exception(refused)
            return
        if record is not None:
            self.done.set_result(job)

    def gone(self, uid: str) -> None:
        if not self.done.done() and (not self.uid or uid == self.uid):
            self.done.set_exception(JobGone())


class JobIndex:
    """Jobs by uid, and the waiters on them; fed by `run()`'s list and watch."""

    def __init__(self, kube: Kube, namespaces: Iterable[str] = (), max_waiting: int = 1000) -> None:
        self.kube = kube
        self.namespaces: list[str | None] = [*namespaces] or [None]
        self.max_waiting = max_waiting
        self.by_uid: dict[str, JobKey] = {}
        self.waiters: dict[JobKey, set[Waiter]] = {}
        self.waiting = 0
        self.synced = asyncio.Event()

    def serves(self, namespace: str) -> bool:
        return self.namespaces == [None] or namespace in self.namespaces

    def locate(self, uid: str) -> JobKey | None:
        return self.by_uid.get(uid)

    @contextlib.asynccontextmanager
    async def waiter(self, namespace: str, name: str, token: str) -> AsyncIterator[Waiter]:
        """Register a waiter on the job before its request is written or checked, so that
        no event recording the outcome can be missed; TooManyWaiting past the bound."""
        if self.waiting >= self.max_waiting:
            raise TooManyWaiting()
        waiter = Waiter(token)
        key = (namespace, name)
        self.waiters.setdefault(key, set()).add(waiter)
        self.waiting += 1
        try:
            yield waiter
        finally:
            self.waiting -= 1
            found = self.waiters.get(key)
            if found is not None:
                found.discard(waiter)
                if not found:
                    del self.waiters[key]
            if not waiter.done.done():
                waiter.done.cancel()
            elif not waiter.done.cancelled():
                waiter.done.exception()  # retrieved: asyncio then reports nothing

    # --- feeding it -----------------------------------------------------------------

    def observe(self, kind: str, raw: dict[str, Any]) -> None:
        """One watch event (or listed item: ADDED) about a job."""
        metadata = raw.get("metadata") or {}
        uid, key = (
            metadata.get("uid", ""),
            (metadata.get("namespace", ""), metadata.get("name", "")),
        )
        if kind == "DELETED":
            if self.by_uid.get(uid) == key:
                del self.by_uid[uid]
            for waiter in list(self.waiters.get(key, ())):
                waiter.gone(uid)
            return
        self.by_uid[uid] = key
        waiters = self.waiters.get(key)
        if waiters:
            job = Job.model_validate(raw)
            for waiter in list(waiters):
                waiter.offer(job)

    async def run(self) -> None:
        """List, then watch from the list's version; list again when the watch breaks or
        expires (410). Runs until cancelled."""
        while True:
            try:
                version = await self.relist()
                self.synced.set()
                await self.follow(version)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # an expired or broken watch: list again
                reason = getattr(error, "status", None) or type(error).__name__
                log.info("the watch of jobs ended (%s); listing them again", reason)
                await asyncio.sleep(RELIST_DELAY_SECONDS)

    async def relist(self) -> dict[str | None, str]:
        """Every job, page by page; jobs gone since the last list are forgotten (and their
        waiters told). Returns each namespace's list resourceVersion."""
        seen: dict[str, JobKey] = {}
        versions: dict[str | None, str] = {}
        for namespace in self.namespaces:
            token: str | None = None
            while True:
                page = await retry_transient(functools.partial(self._page, namespace, token))
                for item in page.get("items") or []:
                    metadata = item.get("metadata") or {}
                    seen[metadata.get("uid", "")] = (metadata["namespace"], metadata["name"])
                    self.observe("ADDED", item)
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    versions[namespace] = page["metadata"]["resourceVersion"]
                    break
        for uid, key in list(self.by_uid.items()):
            if uid not in seen:
                self.observe(
                    "DELETED", {"metadata": {"uid": uid, "namespace": key[0], "name": key[1]}}
                )
        return versions

    def _lister(self, namespace: str | None) -> tuple[Callable[..., Any], tuple[str, ...]]:
        """The list call (and its arguments) for one namespace, or for all."""
        custom = self.kube.custom
        if namespace is None:
            return custom.list_cluster_custom_object, (names.GROUP, names.VERSION, names.JOB_PLURAL)
        return custom.list_namespaced_custom_object, (
            names.GROUP,
            names.VERSION,
            namespace,
            names.JOB_PLURAL,
        )

    async def _page(self, namespace: str | None, token: str | None) -> dict[str, Any]:
        options: dict[str, Any] = {"limit": PAGE_SIZE}
        if token:
            options["_continue"] = token
        lister, arguments = self._lister(namespace)
        raw: dict[str, Any] = await lister(*arguments, **options)
        return raw

    async def follow(self, versions: dict[str | None, str]) -> None:
        """Watch each namespace (or all) from its version until a watch fails."""
        async with asyncio.TaskGroup() as group:
            for namespace, version in versions.items():
                group.create_task(self._watch(namespace, version))

    async def _watch(self, namespace: str | None, version: str) -> None:
        lister, arguments = self._lister(namespace)
        while True:
            stream = watch.Watch()
            try:
                async for event in stream.stream(
                    lister,
                    *arguments,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS,
                ):
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.observe(event["type"], event["raw_object"])
            finally:
                stream.stop()
            if stream.resource_version:
                version = stream.resource_version
