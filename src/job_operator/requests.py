"""Requests as users write them: annotations holding a token, read from a Job.

A request is pending while its token is neither the one its status records as handled
nor one refused before. Who wrote it comes from managedFields (a hint only).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from job_operator import names
from job_operator.models import TOKEN_MAX_LENGTH, Job


@dataclass(frozen=True)
class Request:
    """A request annotation's token, and what it asks for."""

    annotation: str
    token: str
    force: bool = False
    requested_by: str | None = None

    @property
    def digest(self) -> str:
        return token_digest(self.token)


def request_key(annotation: str, digest: str) -> str:
    return f"{annotation}:{digest}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- reading requests from annotations ------------------------------------------------


REQUEST_ANNOTATIONS = (names.RESCHEDULE_ANNOTATION, names.CANCEL_ANNOTATION)


def requested_by(job: Job, annotation: str) -> str | None:
    """The field manager that last wrote `annotation`, from managedFields (a hint only)."""
    best: tuple[str, str] | None = None
    for entry in job.metadata.managed_fields:
        fields: Any = entry.get("fieldsV1") or {}
        owned = fields.get("f:metadata", {}).get("f:annotations", {})
        if f"f:{annotation}" in owned:
            when = str(entry.get("time") or "")
            if best is None or when >= best[0]:
                best = (when, str(entry.get("manager") or ""))
    return best[1] or None if best else None


def request_ownership(managed_fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The part of managedFields `requested_by` reads: who wrote a request annotation, and
    when. Everything else of them (most of a job's bytes) the operator need not keep."""
    kept: list[dict[str, Any]] = []
    for entry in managed_fields:
        fields: Any = entry.get("fieldsV1") or {}
        owned = fields.get("f:metadata", {}).get("f:annotations", {})
        requests: dict[str, Any] = {f"f:{a}": {} for a in REQUEST_ANNOTATIONS if f"f:{a}" in owned}
        if requests:
            kept.append(
                {
                    "manager": entry.get("manager"),
                    "time": entry.get("time"),
                    "fieldsV1": {"f:metadata": {"f:annotations": requests}},
                }
            )
    return kept


def pending_request(job: Job, annotation: str) -> Request | None:
    """The request in `annotation` if its token has not been handled yet."""
    token = job.metadata.annotations.get(annotation, "")
    if not token:
        return None
    status = job.status
    record = status.reschedule if annotation == names.RESCHEDULE_ANNOTATION else status.cancel
    if record is not None and record.request == token:
        return None
    digest = token_digest(token)
    if any(
        r.annotation == annotation and r.token_digest == digest for r in status.rejected_requests
    ):
        return None
    force = (
        annotation == names.RESCHEDULE_ANNOTATION
        and job.metadata.annotations.get(names.RESCHEDULE_FORCE_ANNOTATION) == token
    )
    return Request(annotation, token, force, requested_by(job, annotation))


def invalid_reason(request: Request) -> tuple[names.ConditionReason, str] | None:
    """Why a request cannot be honoured (reason, message), or None if it can."""
    if len(request.token) > TOKEN_MAX_LENGTH:
        return (
            "TokenTooLong",
            f"{request.annotation} is {len(request.token)} characters long; "
            f"at most {TOKEN_MAX_LENGTH} are allowed",
        )
    return None
