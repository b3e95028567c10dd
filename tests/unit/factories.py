"""Builders of model instances for the unit tests (no API server involved), and what a
core rule's decision implies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from job_operator import core, names
from job_operator.models import ExecutorCluster, Job

NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)
JOB_NAME = "nightly"
JOB_NAMESPACE = "default"
JOB_UID = "0b6e8a52-7f43-4d1c-9a43-6d1f2f8c1a10"


def managed_entry(manager: str, time: str | None, *annotations: str) -> dict[str, Any]:
    """A managedFields entry whose owner wrote `annotations` (a fieldsV1 set)."""
    entry: dict[str, Any] = {
        "manager": manager,
        "operation": "Update",
        "apiVersion": names.API_VERSION,
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:annotations": {f"f:{a}": {} for a in annotations}}},
    }
    if time is not None:
        entry["time"] = time
    return entry


def make_job(
    *,
    name: str = JOB_NAME,
    namespace: str = JOB_NAMESPACE,
    uid: str = JOB_UID,
    generation: int | None = 1,
    annotations: dict[str, str] | None = None,
    managed_fields: list[dict[str, Any]] | None = None,
    deletion_timestamp: datetime | None = None,
    creation_timestamp: datetime | None = None,
    type_: str = "materialize-view",
    input_: dict[str, Any] | None = None,
    executor_class: str = "default",
    max_auto_reschedules: int = 3,
    **status: Any,
) -> Job:
    """A Job; `status` takes JobStatus fields by their Python (snake_case) names."""
    return Job.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "resourceVersion": "1",
                "generation": generation,
                "creationTimestamp": creation_timestamp or NOW,
                "deletionTimestamp": deletion_timestamp,
                "annotations": annotations or {},
                "managedFields": managed_fields or [],
            },
            "spec": {
                "type": type_,
                "input": input_ if input_ is not None else {"dataset_id": 10736},
                "executorClass": executor_class,
                "maxAutoReschedules": max_auto_reschedules,
            },
            "status": status,
        }
    )


def make_executor(
    name: str,
    *,
    job: Job | None = None,
    job_uid: str | None = None,
    uid: str = "ec-uid-1",
    attempt: int = 1,
    phase: str | None = None,
    result: dict[str, Any] | None = None,
    message: str | None = None,
    creation_timestamp: datetime | None = None,
    deletion_timestamp: datetime | None = None,
) -> ExecutorCluster:
    """An ExecutorCluster of `job` (or of a job with `job_uid`)."""
    job_name = job.metadata.name if job is not None else JOB_NAME
    ref_uid = job_uid if job_uid is not None else (job.metadata.uid if job else JOB_UID)
    return ExecutorCluster.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": JOB_NAMESPACE,
                "uid": uid,
                "creationTimestamp": creation_timestamp,
                "deletionTimestamp": deletion_timestamp,
            },
            "spec": {"jobRef": {"name": job_name, "uid": ref_uid}, "attempt": attempt},
            "status": {"phase": phase, "result": result, "message": message},
        }
    )


def with_status(job: Job, **changes: Any) -> Job:
    """`job` with some status fields replaced (snake_case names)."""
    return job.model_copy(update={"status": job.status.model_copy(update=changes)})


def annotated(job: Job, annotations: dict[str, str]) -> Job:
    """`job` with `annotations` set (added to or replacing the existing ones)."""
    meta = job.metadata.model_copy(
        update={"annotations": {**job.metadata.annotations, **annotations}}
    )
    return job.model_copy(update={"metadata": meta})


def events_of(decision: core.Decision) -> tuple[core.Event, ...]:
    """The events a rule's decision makes: those of what it changed."""
    return core.events(decision.status, before=decision.before)


def let_go(decision: core.Decision) -> str | None:
    """The cluster a rule's decision has the job let go of, if any."""
    left = decision.before.executor
    return left if left is not None and decision.status.executor != left else None
