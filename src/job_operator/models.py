"""Pydantic models of the Job and ExecutorCluster resources.

These models are the one source of truth for the CRD schemas: `crd.py` renders
crds/*.yaml from them, and a test proves the committed YAML is that rendering.
Field names are the API's (camelCase); Python attributes are snake_case.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

JobState = Literal["pending", "running", "completed", "cancelled", "failed"]
TERMINAL_STATES: Final[frozenset[str]] = frozenset({"completed", "cancelled", "failed"})

ExecutorPhase = Literal["Provisioning", "Running", "Succeeded", "Failed", "Terminated"]
RescheduleOutcome = Literal["rescheduled", "skipped_terminal"]
CancelOutcome = Literal["cancelled", "skipped_terminal"]
ConditionStatus = Literal["True", "False", "Unknown"]
HistoryReason = Literal["Rescheduled", "ExecutorLost", "Cancelled"]

HISTORY_LIMIT: Final = 20
TOKEN_MAX_LENGTH: Final = 256


def rfc3339(moment: datetime) -> str:
    """The written form of the operator's times: UTC, to the microsecond, with `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def kube_time(moment: datetime) -> str:
    """A time as Kubernetes writes metav1.Time (metadata's, events'): to the second, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def unreadable(error: ValidationError) -> str:
    """A stored object the models refuse (a status time edited to year 0, say), in a line."""
    fields = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()
    )
    return f"cannot read the {error.title}: {fields}"


def parse_time(value: object) -> datetime:
    """A time as the API server lets it be stored (RFC 3339: `Z` or an offset, any
    fraction, `t`/`z` in either case), or an aware datetime; in UTC.

    A time without a timezone, or one `datetime` cannot hold (year 0), is refused with a
    ValueError naming it: readers count an object they cannot read and leave it alone.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.upper())
        except ValueError:
            raise ValueError(f"not an RFC 3339 time: {value!r}") from None
    else:
        raise ValueError(f"not a time: {value!r}")
    if moment.utcoffset() is None:
        raise ValueError(f"a time without a timezone: {value!r}")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"a time out of range: {value!r}") from None


TIME_SCHEMA: Final = WithJsonSchema({"type": "string", "format": "date-time"})
Timestamp = Annotated[
    datetime,
    PlainValidator(parse_time),
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    TIME_SCHEMA,
]
"""A time the operator writes: an aware UTC datetime in Python, `rfc3339` in JSON."""
KubeTime = Annotated[
    datetime,
    PlainValidator(parse_time),
    PlainSerializer(kube_time, return_type=str, when_used="json"),
    TIME_SCHEMA,
]
"""A time the API server writes (metadata's): as Timestamp, but to the second in JSON."""


def immutable(field: str) -> dict[str, Any]:
    """A CEL transition rule that refuses changes to `field` once set."""
    return {
        "x-kubernetes-validations": [
            {"rule": "self == oldSelf", "message": f"spec.{field} is immutable"},
        ]
    }


class ApiModel(BaseModel):
    """Reads and writes the API's camelCase names; ignores fields it does not know."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --- Job -----------------------------------------------------------------------------


class RequestSource(ApiModel):
    """Who asked for the job, as the seed API records it."""

    type: str | None = None
    company_id: int | str | None = None
    user_id: int | str | None = None


class JobSpec(ApiModel):
    """What to run. Written by users; `type` and `input` never change after creation."""

    type: Annotated[
        str,
        Field(
            min_length=1,
            description="Kind of job, e.g. materialize-view.",
            json_schema_extra=immutable("type"),
        ),
    ]
    input: Annotated[
        dict[str, Any],
        Field(description="Free-form input of the job.", json_schema_extra=immutable("input")),
    ] = Field(default_factory=dict)
    data_plane_id: str | None = None
    idempotency_key: str | None = None
    request_source: RequestSource | None = None
    executor_class: Annotated[
        str, Field(min_length=1, description="Which kind of ExecutorCluster to ask for.")
    ] = "default"
    max_auto_reschedules: Annotated[
        int, Field(ge=0, description="Automatic reschedules after executor loss before failing.")
    ] = 3


class Condition(ApiModel):
    """A standard Kubernetes condition."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: Timestamp
    observed_generation: int | None = None


class RescheduleRecord(ApiModel):
    """The last handled reschedule request."""

    request: str
    outcome: RescheduleOutcome
    force: bool
    handled_at: Timestamp
    previous_state: JobState
    previous_executor: str | None = None
    requested_by: str | None = None


class CancelRecord(ApiModel):
    """The last handled cancel request."""

    request: str
    outcome: CancelOutcome
    handled_at: Timestamp
    previous_state: JobState


class RejectedRequest(ApiModel):
    """A request annotation that could not be honoured; kept so it is not retried."""

    annotation: str
    token_digest: Annotated[str, Field(description="sha256 of the refused token, hex.")]
    reason: str
    message: str
    rejected_at: Timestamp


class HistoryEntry(ApiModel):
    """One earlier attempt of the job."""

    attempt: int
    executor: str | None = None
    state: JobState
    started_at: Timestamp | None = None
    ended_at: Timestamp | None = None
    reason: HistoryReason
    result: dict[str, Any] | None = None


class JobStatus(ApiModel):
    """What the operator knows of the job. Written only by the operator."""

    state: JobState = "pending"
    executor: str | None = None
    attempt: Annotated[int, Field(ge=0)] = 0
    result: dict[str, Any] | None = None
    reason: Annotated[str | None, Field(description="Why the job is in its state.")] = None
    message: str | None = None
    started_at: Timestamp | None = None
    ended_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    dispatch_after: Annotated[
        Timestamp | None,
        Field(description="Backoff after an executor loss: no dispatch before this time."),
    ] = None
    reschedule: RescheduleRecord | None = None
    cancel: CancelRecord | None = None
    rejected_requests: Annotated[
        list[RejectedRequest],
        Field(
            max_length=2,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["annotation"],
            },
        ),
    ] = Field(default_factory=list)
    auto_reschedules: Annotated[int, Field(ge=0)] = 0
    history: Annotated[list[HistoryEntry], Field(max_length=HISTORY_LIMIT)] = Field(
        default_factory=list
    )
    conditions: Annotated[
        list[Condition],
        Field(
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            }
        ),
    ] = Field(default_factory=list)
    observed_generation: int | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class ObjectMeta(ApiModel):
    """The part of metadata the operator reads."""

    name: str
    namespace: str | None = None
    uid: str = ""
    resource_version: str = ""
    generation: int | None = None
    creation_timestamp: KubeTime | None = None
    deletion_timestamp: KubeTime | None = None
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    managed_fields: list[dict[str, Any]] = Field(default_factory=list)


class Job(ApiModel):
    """A Job as read from the API."""

    metadata: ObjectMeta
    spec: JobSpec
    status: JobStatus = Field(default_factory=JobStatus)


# --- ExecutorCluster -----------------------------------------------------------------


class JobRef(ApiModel):
    name: str
    uid: str


class ExecutorSpec(ApiModel):
    """Which job attempt this cluster runs. Written once, by the dispatcher."""

    job_ref: JobRef
    attempt: Annotated[int, Field(ge=1)]
    executor_class: str = "default"


class ExecutorStatus(ApiModel):
    """Written by whatever provisions clusters (the simulator, or a real provisioner)."""

    phase: ExecutorPhase | None = None
    result: dict[str, Any] | None = None
    message: str | None = None


class ExecutorCluster(ApiModel):
    """An ExecutorCluster as read from the API."""

    metadata: ObjectMeta
    spec: ExecutorSpec
    status: ExecutorStatus = Field(default_factory=ExecutorStatus)
