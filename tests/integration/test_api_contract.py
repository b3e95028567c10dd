"""The API double (tests/double.py) against the real test API server: the same checks run
on both, so the controller's unit tests stand on what the API server really does.

Each test takes `side`, parametrised: `double` runs in memory, `server` against the test
API server (or $KUBECONFIG's cluster) through the operator's own `kube.Kube`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from job_operator import core, executors, names
from job_operator.cache import is_newer
from job_operator.controller import Api
from job_operator.kube import AS_MERGE_PATCH, Conflict, Kube, NotFound
from job_operator.models import Job
from tests.double import FakeApi
from tests.helpers import Kube as Cluster


@dataclass
class Side:
    """One API server (real or double), and how a user and a provisioner act on it."""

    api: Api
    namespace: str
    kube: Kube | None = None  # the real one's client, for what users do
    double: FakeApi | None = None

    async def create_job(self, name: str) -> Job:
        if self.double is not None:
            return self.double.create_job(name, self.namespace)
        assert self.kube is not None
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.JOB_KIND,
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"type": "materialize-view", "input": {}},
        }
        raw = await self.kube.custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, self.namespace, names.JOB_PLURAL, body
        )
        return Job.model_validate(raw)

    async def edit_status(self, name: str, status: dict[str, Any]) -> None:
        """What a user's `kubectl patch --subresource=status --type=merge` does."""
        if self.double is not None:
            self.double.edit_status(name, status, self.namespace)
            return
        assert self.kube is not None
        await self.kube.custom.patch_namespaced_custom_object_status(
            names.GROUP,
            names.VERSION,
            self.namespace,
            names.JOB_PLURAL,
            name,
            {"status": status},
            **AS_MERGE_PATCH,
        )

    def manifest(self, job: Job, name: str) -> dict[str, Any]:
        return executors.executor_manifest(job, name)


@pytest.fixture(params=["double", "server"])
async def side(request: pytest.FixtureRequest) -> AsyncIterator[Side]:
    if request.param == "double":
        double = FakeApi()
        yield Side(api=double, namespace="default", double=double)
        return
    cluster: Cluster = request.getfixturevalue("kube")
    request.getfixturevalue("crds")
    namespace: str = request.getfixturevalue("namespace")
    async with Kube.connect(str(cluster.kubeconfig)) as kube:
        yield Side(api=kube, namespace=namespace, kube=kube)


def fresh_name() -> str:
    return executors.new_executor_name(str(uuid.uuid4()))


async def test_a_status_write_is_a_compare_and_swap_on_the_resource_version(side: Side) -> None:
    job = await side.create_job("cas")
    read = await side.api.get_job(side.namespace, "cas")
    assert read.metadata.uid == job.metadata.uid
    status = read.status.model_copy(update={"state": "running", "attempt": 1})
    written = await side.api.write_job_status(read, status)
    assert written.status.state == "running" and written.status.attempt == 1
    assert is_newer(written.metadata.resource_version, read.metadata.resource_version)
    with pytest.raises(Conflict):  # written from the version before: refused
        await side.api.write_job_status(read, status.model_copy(update={"attempt": 2}))
    assert (await side.api.get_job(side.namespace, "cas")).status.attempt == 1


async def test_a_status_write_replaces_the_status(side: Side) -> None:
    await side.create_job("replace")
    read = await side.api.get_job(side.namespace, "replace")
    first = read.status.model_copy(update={"executor": "job-executor-a", "reason": "X"})
    written = await side.api.write_job_status(read, first)
    second = written.status.model_copy(update={"executor": None, "reason": None})
    again = await side.api.write_job_status(written, second)
    assert (again.status.executor, again.status.reason) == (None, None)


async def test_a_missing_job_is_not_found(side: Side) -> None:
    with pytest.raises(NotFound):
        await side.api.get_job(side.namespace, "nobody")
    ghost = Job.model_validate(
        {"metadata": {"name": "nobody", "namespace": side.namespace}, "spec": {"type": "t"}}
    )
    with pytest.raises(NotFound):
        await side.api.write_job_status(ghost, ghost.status)


async def test_a_cluster_is_created_once_listed_and_deleted_once(side: Side) -> None:
    job = await side.create_job("owner")
    name = fresh_name()
    created = await side.api.create_executor(side.manifest(job, name))
    assert created.metadata.uid and created.metadata.resource_version
    assert created.metadata.creation_timestamp
    assert created.spec.job_ref.uid == job.metadata.uid and created.spec.attempt == 1
    with pytest.raises(Conflict):
        await side.api.create_executor(side.manifest(job, name))
    listed = [c async for page in side.api.executor_pages(side.namespace) for c in page]
    assert [c.metadata.name for c in listed] == [name]
    assert await side.api.delete_executor(side.namespace, name)
    assert not await side.api.delete_executor(side.namespace, name)
    assert [c async for page in side.api.executor_pages(side.namespace) for c in page] == []


async def test_an_event_is_posted_once_per_name(side: Side) -> None:
    job = await side.create_job("noted")
    event = core.Event("Normal", "Rescheduled", "rescheduled from running", "key-1")
    assert await side.api.post_event(job, event)
    assert await side.api.post_event(job, event)  # the same again: refused, and fine
    posted = await side.api.event_names(side.namespace)
    assert core.event_name(job, event.key) in posted
    other = core.Event("Normal", "Rescheduled", "again", "key-2")
    assert core.event_name(job, other.key) not in posted


async def test_lists_have_every_object_without_managed_fields(side: Side) -> None:
    for i in range(3):
        await side.create_job(f"listed-{i}")
    jobs = [j async for page in side.api.job_pages(side.namespace) for j in page]
    assert sorted(j.metadata.name for j in jobs) == ["listed-0", "listed-1", "listed-2"]
    assert all(j.metadata.managed_fields == [] for j in jobs)


async def test_a_job_with_a_time_no_datetime_holds_is_refused_by_a_read_and_a_list(
    side: Side,
) -> None:
    await side.create_job("year-zero")
    await side.create_job("readable")
    await side.edit_status("year-zero", {"startedAt": "0000-01-01T00:00:00Z"})  # stored
    with pytest.raises(ValidationError, match="startedAt"):
        await side.api.get_job(side.namespace, "year-zero")
    jobs = [j async for page in side.api.job_pages(side.namespace) for j in page]
    assert [j.metadata.name for j in jobs] == ["readable"]
    await side.edit_status("year-zero", {"startedAt": None})
    assert (await side.api.get_job(side.namespace, "year-zero")).status.started_at is None
