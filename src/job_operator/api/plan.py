"""What a reschedule request does to a job, decided from the job as read: pure rules.

A request's token is the Idempotency-Key (or one the server makes). The write is a
JSON patch that tests the job's uid, so it lands only on the job the caller meant.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from job_operator import core, names
from job_operator.models import Job, RescheduleRecord


class Refused(Exception):
    """The request cannot be honoured as asked (HTTP 422); nothing was written."""


@dataclass(frozen=True)
class Plan:
    """`patch` to write (None: write nothing), or the `recorded` outcome to answer with."""

    patch: list[dict[str, Any]] | None = None
    recorded: RescheduleRecord | None = None


def new_token() -> str:
    """A fresh token: the time (sortable, as the CLI's) and randomness (many replicas)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{now}-{os.getpid() % 1000:03d}{secrets.token_hex(4)}"


def pointer(*parts: str) -> str:
    """A JSON pointer (RFC 6901) to the given keys."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def plan(job: Job, token: str, force: bool) -> Plan:
    """The write for `token`, or the outcome already recorded for it.

    Asked again with the same token (an Idempotency-Key repeated) the request writes
    nothing: its recorded outcome answers, or, not yet handled, the pending one is
    waited for. The same token asking for another `force` is refused."""
    record = handled(job, token)
    if record is not None:
        if record.force != force:
            raise Refused(_force_mismatch(token, record.force))
        return Plan(recorded=record)
    annotations = job.metadata.annotations
    if annotations.get(names.RESCHEDULE_ANNOTATION) == token:
        pending_force = annotations.get(names.RESCHEDULE_FORCE_ANNOTATION) == token
        if pending_force != force:
            raise Refused(_force_mismatch(token, pending_force))
        return Plan()
    return Plan(patch=patch_for(job, token, force))


def _force_mismatch(token: str, was: bool) -> str:
    return (
        f"Idempotency-Key {token!r} was used with force={str(was).lower()}; "
        "use a new key to ask for something else"
    )


def patch_for(job: Job, token: str, force: bool) -> list[dict[str, Any]]:
    """Set the request annotations, only on this job (its uid) — and, when the job has no
    annotations yet (the map is then written whole), only on the version read."""
    wanted = {names.RESCHEDULE_ANNOTATION: token}
    if force:
        wanted[names.RESCHEDULE_FORCE_ANNOTATION] = token
    operations = same_job(job.metadata.uid)
    if not job.metadata.annotations:
        operations += [
            {
                "op": "test",
                "path": pointer("metadata", "resourceVersion"),
                "value": job.metadata.resource_version,
            },
            {"op": "add", "path": pointer("metadata", "annotations"), "value": wanted},
        ]
        return operations
    operations += [
        {"op": "add", "path": pointer("metadata", "annotations", key), "value": value}
        for key, value in wanted.items()
    ]
    return operations


def same_job(uid: str) -> list[dict[str, Any]]:
    """A patch that only tests the job's uid: alone, it changes nothing, but the API server
    still authorises it as a `patch` by the caller — how an answer that writes nothing (a
    repeated Idempotency-Key) is allowed only to those who may write."""
    return [{"op": "test", "path": pointer("metadata", "uid"), "value": uid}]


def handled(job: Job, token: str) -> RescheduleRecord | None:
    """The operator's record of `token`, once it has handled it; Refused if it refused it."""
    record = job.status.reschedule
    if record is not None and record.request == token:
        return record
    digest = core.token_digest(token)
    for rejected in job.status.rejected_requests:
        if rejected.annotation == names.RESCHEDULE_ANNOTATION and rejected.token_digest == digest:
            raise Refused(f"the operator refused the request: {rejected.message}")
    return None


def field_manager(user: str) -> str:
    """The field manager the write is made under: it names the caller, so the job's
    status.reschedule.requestedBy does (at most 128 characters, as the API allows)."""
    return f"{names.API_FIELD_MANAGER}:{user}"[:128] if user else names.API_FIELD_MANAGER
