"""An in-memory API server double for the controller's unit tests.

It implements the calls the controller makes (`controller.Api`) with the API server's
semantics the operator relies on: resourceVersions from one counter, compare-and-swap
status writes (409), 404s, 409 on a second create or event of one name, paged lists.
`tests/integration/test_api_contract.py` runs the same checks on it and on the
real test API server, so it cannot drift from it. Changes are also kept as watch events
(`pending`), which a test delivers to a controller when it chooses (late, or not at all).
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from job_operator import core, names
from job_operator.controller import Controller
from job_operator.kube import Conflict, NotFound, lean_job, readable
from job_operator.models import ExecutorCluster, Job, JobStatus, kube_time

Kind = Literal["job", "cluster"]
ObjectKey = tuple[str, str]


@dataclass
class WatchEvent:
    kind: Kind
    type: Literal["ADDED", "MODIFIED", "DELETED"]
    body: dict[str, Any]


@dataclass
class FakeApi:
    """Jobs, ExecutorClusters and Events of one API server, in memory."""

    page_size: int = 2
    jobs: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    clusters: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    events: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    pending: list[WatchEvent] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # verb and resource of every call
    # Set to make the next calls of that name fail (as a crash or a broken connection).
    failing: dict[str, Exception] = field(default_factory=dict)
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    # --- helpers ------------------------------------------------------------------

    def _call(self, name: str) -> None:
        self.calls.append(name)
        error = self.failing.pop(name, None)
        if error is not None:
            raise error

    def _stamp(self, body: dict[str, Any], type_: str, kind: Kind) -> dict[str, Any]:
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.pending.append(WatchEvent(kind, type_, copy.deepcopy(body)))  # type: ignore[arg-type]
        return body

    def writes(self) -> list[str]:
        return [c for c in self.calls if not c.startswith(("get ", "list "))]

    # --- what users and provisioners do ---------------------------------------------

    def create_job(self, name: str, namespace: str = "default", **spec: Any) -> Job:
        body: dict[str, Any] = {
            "apiVersion": names.API_VERSION,
            "kind": names.JOB_KIND,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "generation": 1,
                "creationTimestamp": kube_time(datetime.now(UTC)),
                "annotations": {},
            },
            "spec": {"type": "materialize-view", "input": {}, **spec},
        }
        self.jobs[(namespace, name)] = self._stamp(body, "ADDED", "job")
        return Job.model_validate(body)

    def annotate(
        self,
        name: str,
        annotations: dict[str, str],
        namespace: str = "default",
        *,
        manager: str | None = None,
    ) -> None:
        """Write annotations; with `manager`, recorded in managedFields as the server does."""
        body = self.jobs[(namespace, name)]
        body["metadata"].setdefault("annotations", {}).update(annotations)
        if manager is not None:
            owned: dict[str, Any] = {f"f:{key}": {} for key in annotations}
            body["metadata"].setdefault("managedFields", []).append(
                {
                    "manager": manager,
                    "operation": "Update",
                    "apiVersion": names.API_VERSION,
                    "time": kube_time(datetime.now(UTC)),
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:annotations": owned}},
                }
            )
        self._stamp(body, "MODIFIED", "job")

    def edit_status(self, name: str, status: dict[str, Any], namespace: str = "default") -> None:
        """A user's merge patch of the status (`kubectl patch --subresource=status`): stored
        as given, even a time the models refuse (year 0), as the API server stores it."""
        body = self.jobs[(namespace, name)]
        merged = {**body.get("status", {}), **status}
        body["status"] = {key: value for key, value in merged.items() if value is not None}
        self._stamp(body, "MODIFIED", "job")

    def delete_job(self, name: str, namespace: str = "default") -> None:
        body = self.jobs.pop((namespace, name))
        self._stamp(body, "DELETED", "job")

    def set_phase(self, name: str, phase: str, namespace: str = "default", **status: Any) -> None:
        body = self.clusters[(namespace, name)]
        body["status"] = {"phase": phase, **status}
        self._stamp(body, "MODIFIED", "cluster")

    def remove_cluster(self, name: str, namespace: str = "default") -> None:
        """Someone else deletes a cluster."""
        body = self.clusters.pop((namespace, name))
        self._stamp(body, "DELETED", "cluster")

    def job(self, name: str, namespace: str = "default") -> Job:
        return Job.model_validate(self.jobs[(namespace, name)])

    def cluster_names(self, namespace: str = "default") -> list[str]:
        return sorted(n for ns, n in self.clusters if ns == namespace)

    def deliver(self, to: Controller, *, keep: Callable[[WatchEvent], bool] | None = None) -> None:
        """Hand the watch events so far to `to`, as kopf's handlers do (`keep` drops some)."""
        pending, self.pending = self.pending, []
        for event in pending:
            if keep is not None and not keep(event):
                continue
            if event.kind == "job":
                to.job_event(event.type, event.body)
            else:
                to.cluster_event(event.type, event.body)

    # --- controller.Api ------------------------------------------------------------

    async def get_job(self, namespace: str, name: str) -> Job:
        self._call("get jobs")
        body = self.jobs.get((namespace, name))
        if body is None:
            raise NotFound(name)
        return Job.model_validate(copy.deepcopy(body))

    async def write_job_status(self, job: Job, status: JobStatus) -> Job:
        self._call("patch jobs/status")
        key = (job.metadata.namespace or "", job.metadata.name)
        body = self.jobs.get(key)
        if body is None:
            raise NotFound(job.metadata.name)
        if body["metadata"]["resourceVersion"] != job.metadata.resource_version:
            raise Conflict(job.metadata.name)
        body["status"] = status.to_api()
        return Job.model_validate(copy.deepcopy(self._stamp(body, "MODIFIED", "job")))

    async def create_executor(self, manifest: dict[str, Any]) -> ExecutorCluster:
        self._call("create executorclusters")
        meta = manifest["metadata"]
        key = (meta["namespace"], meta["name"])
        if key in self.clusters:
            raise Conflict(meta["name"])
        body = copy.deepcopy(manifest)
        body["metadata"].update(
            uid=str(uuid.uuid4()), creationTimestamp=kube_time(datetime.now(UTC))
        )
        self.clusters[key] = self._stamp(body, "ADDED", "cluster")
        return ExecutorCluster.model_validate(copy.deepcopy(body))

    async def delete_executor(self, namespace: str, name: str) -> bool:
        self._call("delete executorclusters")
        body = self.clusters.pop((namespace, name), None)
        if body is None:
            return False
        self._stamp(body, "DELETED", "cluster")
        return True

    async def post_event(self, job: Job, event: core.Event) -> bool:
        try:
            self._call("create events")
        except (OSError, TimeoutError):
            return False
        name = core.event_name(job, event.key)
        key = (job.metadata.namespace or "", name)
        if key not in self.events:
            self.events[key] = {
                "metadata": {"name": name, "namespace": job.metadata.namespace},
                "involvedObject": {"uid": job.metadata.uid, "name": job.metadata.name},
                "reason": event.reason,
                "message": event.message,
                "type": event.type,
            }
        return True

    async def job_pages(self, namespace: str | None = None) -> AsyncIterator[list[Job]]:
        self._call("list jobs")
        for page in self._pages(self.jobs, namespace):
            yield readable(Job, page, lean_job)

    async def executor_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[ExecutorCluster]]:
        self._call("list executorclusters")
        for page in self._pages(self.clusters, namespace):
            yield readable(ExecutorCluster, page)

    def _pages(
        self, objects: dict[ObjectKey, dict[str, Any]], namespace: str | None
    ) -> list[list[dict[str, Any]]]:
        listed = [
            copy.deepcopy(body)
            for (ns, _), body in sorted(objects.items())
            if namespace in (None, ns)
        ]
        return [listed[i : i + self.page_size] for i in range(0, len(listed), self.page_size)]

    async def event_names(self, namespace: str | None) -> set[str]:
        self._call("list events")
        return {name for (ns, name) in self.events if namespace in (None, ns)}
