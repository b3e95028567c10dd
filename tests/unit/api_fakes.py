"""An in-memory cluster for the HTTP API's unit tests: jobs, users with tokens and a
yes/no write permission, JSON patches applied as the API server applies them, and an
operator that records each new request as the contract says."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
from kubernetes_asyncio.client.exceptions import ApiException

from job_operator import names
from job_operator.api.waiting import JobIndex
from job_operator.kube import NotFound
from job_operator.models import TERMINAL_STATES, Job

EDITOR, VIEWER = "editor-token", "viewer-token"
USERS = {EDITOR: ("alice", True), VIEWER: ("bob", False)}


def raw_job(name: str, uid: str, state: str = "running", **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.JOB_KIND,
        "metadata": {
            "name": name,
            "namespace": "data",
            "uid": uid,
            "resourceVersion": "1",
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "annotations": dict(annotations),
        },
        "spec": {"type": "materialize-view", "input": {"dataset_id": 10736}},
        "status": {
            "state": state,
            "executor": "job-executor-old" if state == "running" else None,
            "attempt": 1,
        },
    }


@dataclass
class FakeCluster:
    """Implements the app's Caller and JobReader over a dict of jobs."""

    index: JobIndex
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    writes: list[tuple[str, list[dict[str, Any]], str]] = field(default_factory=list)
    operator_running: bool = True
    version: int = 1

    def add(self, raw: dict[str, Any]) -> None:
        key = (raw["metadata"]["namespace"], raw["metadata"]["name"])
        self.jobs[key] = raw
        self.index.observe("ADDED", raw)

    def delete(self, namespace: str, name: str) -> None:
        raw = self.jobs.pop((namespace, name))
        self.index.observe("DELETED", raw)

    def _user(self, token: str) -> tuple[str, bool]:
        if token not in USERS:
            raise ApiException(status=401, reason="Unauthorized")
        return USERS[token]

    async def whoami(self, token: str) -> str:
        return self._user(token)[0]

    async def get_job(self, token: str, namespace: str, name: str) -> dict[str, Any]:
        self._user(token)
        return copy.deepcopy(self._raw(namespace, name))

    def _raw(self, namespace: str, name: str) -> dict[str, Any]:
        raw = self.jobs.get((namespace, name))
        if raw is None:
            raise NotFound(name)
        return raw

    async def patch_job(
        self,
        token: str,
        namespace: str,
        name: str,
        operations: list[dict[str, Any]],
        field_manager: str,
    ) -> dict[str, Any]:
        user, may = self._user(token)
        if not may:
            raise ApiException(status=403, reason=f'User "{user}" cannot patch resource "jobs"')
        raw = self._raw(namespace, name)  # after authorisation, as the API server does
        try:
            patched = jsonpatch.apply_patch(raw, operations)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as error:
            raise ApiException(status=422, reason=str(error)) from None
        if patched == raw:  # a no-op, as the API server treats it: nothing written
            return copy.deepcopy(raw)
        self.version += 1
        patched["metadata"]["resourceVersion"] = str(self.version)
        self.jobs[(namespace, name)] = patched
        self.writes.append((name, operations, field_manager))
        self.index.observe("MODIFIED", patched)
        if self.operator_running:
            self.handle(namespace, name, field_manager)
        return copy.deepcopy(patched)

    def handle(self, namespace: str, name: str, requested_by: str) -> None:
        """The operator's part, in short: record the new token with its outcome."""
        raw = self.jobs[(namespace, name)]
        annotations = raw["metadata"]["annotations"]
        token = annotations[names.RESCHEDULE_ANNOTATION]
        status = raw["status"]
        force = annotations.get(names.RESCHEDULE_FORCE_ANNOTATION) == token
        skipped = status["state"] in TERMINAL_STATES and not force
        status["reschedule"] = {
            "request": token,
            "outcome": "skipped_terminal" if skipped else "rescheduled",
            "force": force,
            "handledAt": "2026-12-01T10:00:01Z",
            "previousState": status["state"],
            "requestedBy": requested_by,
        }
        if not skipped:
            status.update(state="pending", executor=None, attempt=status["attempt"] + 1)
        self.version += 1
        raw["metadata"]["resourceVersion"] = str(self.version)
        self.index.observe("MODIFIED", raw)


@dataclass
class ServerReader:
    """The server's own reads (JobReader), of the same jobs."""

    cluster: FakeCluster

    async def get_job(self, namespace: str, name: str) -> Job:
        return Job.model_validate(self.cluster._raw(namespace, name))
