"""kube.Kube.list_then_watch, the one list-then-watch loop of the bulk CLI, the simulator
and the HTTP API, against the real API server: a watch from a resourceVersion the server
no longer keeps gets 410 Gone, and the loop lists again and misses nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from job_operator import names
from job_operator.kube import Kube
from tests.helpers import Kube as Cluster
from tests.helpers import async_wait_for
from tests.integration.conftest import Jobs

TOO_OLD = "1"  # older than any API server's watch cache or etcd's compaction keeps


class Recorder:
    """What the loop told its caller: the events by job name, each list's uids, and
    every failure it handed to on_error (a 410 is handled without it)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.lists: list[set[str]] = []
        self.errors: list[Exception] = []

    def event(self, kind: str, raw: dict[str, Any]) -> None:
        self.events.append((kind, raw["metadata"]["name"]))

    def kinds(self, name: str) -> list[str]:
        return [kind for kind, named in self.events if named == name]


async def test_a_watch_that_gets_410_gone_lists_again_and_misses_nothing(
    kube: Cluster, jobs: Jobs
) -> None:
    await asyncio.to_thread(jobs.create, "kept")
    await asyncio.to_thread(jobs.create, "changed")
    await asyncio.to_thread(jobs.create, "deleted-before")
    gone_uid = jobs.get("deleted-before")["metadata"]["uid"]
    await asyncio.to_thread(
        kube.kubectl_run, "delete", "ojob", "deleted-before", "-n", jobs.namespace
    )
    uids = {name: jobs.get(name)["metadata"]["uid"] for name in ("kept", "changed")}
    seen = Recorder()
    async with Kube.connect(str(kube.kubeconfig)) as client:
        loop = asyncio.create_task(
            client.list_then_watch(
                names.JOB_PLURAL,
                jobs.namespace,
                seen.event,
                on_listed=seen.lists.append,
                on_error=seen.errors.append,
                resource_version=TOO_OLD,
            )
        )
        try:

            async def listed() -> bool:
                return bool(seen.lists)

            # Only a failed watch makes it list (it was given a version): 410, since
            # on_error heard of no other failure.
            await async_wait_for(listed, timeout=30, description="a list after 410 Gone")
            assert seen.errors == []
            assert seen.lists == [set(uids.values())]  # the job deleted meanwhile is not
            assert gone_uid not in seen.lists[0]
            assert seen.kinds("kept") == seen.kinds("changed") == ["ADDED"]
            # Every change after the list arrives, from the list's resourceVersion on.
            await asyncio.to_thread(jobs.create, "made-after")
            await asyncio.to_thread(jobs.annotate, "changed", {"example.com/touched": "yes"})
            await asyncio.to_thread(
                kube.kubectl_run, "delete", "ojob", "kept", "-n", jobs.namespace
            )

            async def followed() -> list[tuple[str, str]] | None:
                done = (
                    seen.kinds("made-after") == ["ADDED"]
                    and seen.kinds("changed") == ["ADDED", "MODIFIED"]
                    and seen.kinds("kept") == ["ADDED", "DELETED"]
                )
                return seen.events if done else None

            await async_wait_for(followed, timeout=30, description="every change as an event")
            assert len(seen.lists) == 1 and seen.errors == []  # watched on, not listed again
            assert not loop.done()
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
