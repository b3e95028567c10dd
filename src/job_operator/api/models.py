"""The HTTP API's bodies, as pydantic models: FastAPI derives validation and the
OpenAPI document from them. Field names are the seed API's (snake_case)."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from job_operator.models import TIME_SCHEMA, TOKEN_MAX_LENGTH, JobState, RescheduleOutcome

# An Idempotency-Key becomes the request's annotation token: as long as the annotation
# allows, in printable ASCII without spaces (what an HTTP header carries safely).
KEY_PATTERN: Final = r"^[!-~]+$"
IdempotencyKey = Annotated[
    str, Field(min_length=1, max_length=TOKEN_MAX_LENGTH, pattern=KEY_PATTERN)
]
# A time as views.seed_job writes it (models.rfc3339 or kube_time): RFC 3339 text.
TimeText = Annotated[str, TIME_SCHEMA]


class RescheduleBody(BaseModel):
    """Optional body for rescheduling a job. May be omitted entirely — an empty body keeps
    the default behaviour, where rescheduling is a no-op for jobs already in a terminal
    state (completed, cancelled, failed)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    force: bool = Field(
        default=False,
        description="When true, reschedule the job even if it is in a terminal state, "
        "resetting it to pending and clearing its executor so the operator re-dispatches "
        "it onto a fresh cluster. When omitted or false, terminal jobs are left untouched.",
    )


class RequestSource(BaseModel):
    """Who asked for the job, as the seed API records it."""

    type: str | None = None
    company_id: int | str | None = None
    user_id: int | str | None = None


class SeedJob(BaseModel):
    """A job, in the seed API's shape."""

    job_id: str = Field(description="The job's unique identifier (its Kubernetes uid).")
    state: JobState
    type: str
    input: dict[str, Any]
    executor: str | None = Field(description="The ExecutorCluster the job runs on, if any.")
    data_plane_id: str | None
    request_source: RequestSource | None
    idempotency_key: str | None
    result: dict[str, Any] | None
    created_at: TimeText | None
    updated_at: TimeText | None
    ended_at: TimeText | None


class RescheduleResult(SeedJob):
    """Result of rescheduling a job — what happened, plus the job's current state
    afterwards."""

    outcome: RescheduleOutcome = Field(
        description="What a reschedule call did. `rescheduled`: the job was put back on "
        "the queue (reset to pending, executor cleared). `skipped_terminal`: the job was "
        "left untouched because it was already in a terminal state and force was not set."
    )


class Accepted(BaseModel):
    """A reschedule request written but not waited for (`?wait=false`)."""

    token: str = Field(
        description="The request's token: send it as Idempotency-Key to ask for its outcome."
    )
    job_id: str
    namespace: str
    name: str


class Problem(BaseModel):
    """An error: a reason a person can read, and what else helps the caller."""

    error: str = Field(description="What went wrong, in one line.")
    token: str | None = Field(
        default=None, description="The request's token, when one was made (ask again with it)."
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Each invalid input, as FastAPI's validation reports it."
    )


ProbeStatus = Literal["ok", "not ready"]
