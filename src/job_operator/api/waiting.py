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
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from job_operator import names
from job_operator.api import plan
from job_operator.kube import Backoff, Kube
from job_operator.models import Job

log = logging.getLogger(__name__)
RELIST_DELAY_SECONDS: Final = 1.0  # after a failed list or watch

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
    """Jobs by uid, and the waiters on them; fed by `run()`'s lists and watches."""

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
            try:
                job = Job.model_validate(raw)
            except ValueError as error:  # the operator leaves it alone too: waiters time out
                log.warning("a job waited for cannot be read: %s", error)
                return
            for waiter in list(waiters):
                waiter.offer(job)

    async def run(self) -> None:
        """Follow the jobs of each namespace served (or of all): ready (`synced`) once
        each has been listed, and from then on. Runs until cancelled."""
        unlisted = set(self.namespaces)

        def listed(namespace: str | None, present: set[str]) -> None:
            self.forget_unlisted(namespace, present)
            unlisted.discard(namespace)
            if not unlisted:
                self.synced.set()

        async with asyncio.TaskGroup() as group:
            for namespace in self.namespaces:
                group.create_task(
                    self.kube.list_then_watch(
                        names.JOB_PLURAL,
                        namespace,
                        self.observe,
                        on_listed=functools.partial(listed, namespace),
                        on_error=functools.partial(self.watch_failed, namespace),
                        backoff=Backoff(first=RELIST_DELAY_SECONDS, most=RELIST_DELAY_SECONDS),
                    )
                )

    def forget_unlisted(self, namespace: str | None, present: set[str]) -> None:
        """The jobs of `namespace` (None: all) were listed: those not listed are gone (and
        their waiters told)."""
        for uid, (job_namespace, name) in list(self.by_uid.items()):
            if uid not in present and namespace in (None, job_namespace):
                self.observe(
                    "DELETED", {"metadata": {"uid": uid, "namespace": job_namespace, "name": name}}
                )

    @staticmethod
    def watch_failed(namespace: str | None, error: Exception) -> None:
        """Logged; the watch goes on (the server stays ready: it answers what it knows)."""
        reason = getattr(error, "status", None) or type(error).__name__
        log.info(
            "the watch of jobs in %s failed (%s); following them again", namespace or "*", reason
        )
