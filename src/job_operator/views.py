"""The seed API's shapes (snake_case) of a Job and of a reschedule result."""

from __future__ import annotations

from typing import Any

from job_operator.models import Job, kube_time, rfc3339


def seed_job(job: Job) -> dict[str, Any]:
    """The job as the seed's HTTP API shows it."""
    spec, status, created = job.spec, job.status, job.metadata.creation_timestamp
    source = spec.request_source
    return {
        "job_id": job.metadata.uid,
        "state": status.state,
        "type": spec.type,
        "input": spec.input,
        "executor": status.executor,
        "data_plane_id": spec.data_plane_id,
        "request_source": None
        if source is None
        else {
            "type": source.type,
            "company_id": source.company_id,
            "user_id": source.user_id,
        },
        "idempotency_key": spec.idempotency_key,
        "result": status.result,
        "created_at": None if created is None else kube_time(created),
        "updated_at": None if status.updated_at is None else rfc3339(status.updated_at),
        "ended_at": None if status.ended_at is None else rfc3339(status.ended_at),
    }


def seed_result(outcome: str, job: Job) -> dict[str, Any]:
    """A reschedule (or cancel) result: what happened, plus the job afterwards."""
    return {"outcome": outcome, **seed_job(job)}


def as_text(result: dict[str, Any]) -> str:
    """Aligned `key: value` lines, for people."""
    width = max(len(k) for k in result)
    lines = []
    for k, v in result.items():
        shown = "-" if v is None else v
        lines.append(f"{k.ljust(width)}  {shown}")
    return "\n".join(lines)
