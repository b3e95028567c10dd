"""The HTTP API as a FastAPI application: routes, errors, limits and metrics.

Every answer about a job is made with the caller's token (`Caller`), so the Kubernetes
API server decides who may; the server's own identity (`JobReader`, `JobIndex`) only
reads jobs: to find one by uid and to see the operator's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Final, Protocol, TypeVar

import aiohttp
from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from job_operator import views
from job_operator.api import metrics, plan
from job_operator.api.middleware import BodyLimit, Instrumented
from job_operator.api.models import (
    Accepted,
    IdempotencyKey,
    Problem,
    RescheduleBody,
    RescheduleResult,
    SeedJob,
)
from job_operator.api.waiting import JobGone, JobIndex, TooManyWaiting
from job_operator.kube import NotFound
from job_operator.models import Job

T = TypeVar("T")
DEFAULT_TIMEOUT_SECONDS: Final = 30.0
WRITE_ATTEMPTS: Final = 5
RETRY_AFTER_SECONDS: Final = "1"
# Kubernetes names: a namespace is a DNS label, a Job's name a DNS subdomain.
NAMESPACE_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
BEARER: Final = {"WWW-Authenticate": "Bearer"}


class Caller(Protocol):
    """Kubernetes calls made with the caller's token (passthrough.CallerClient)."""

    async def whoami(self, token: str) -> str: ...
    async def get_job(self, token: str, namespace: str, name: str) -> dict[str, Any]: ...
    async def patch_job(
        self,
        token: str,
        namespace: str,
        name: str,
        operations: list[dict[str, Any]],
        field_manager: str,
    ) -> dict[str, Any]: ...


class JobReader(Protocol):
    """Reads with the server's own identity (kube.Kube)."""

    async def get_job(self, namespace: str, name: str) -> Job: ...


@dataclass(frozen=True)
class Settings:
    max_timeout_seconds: float = 300.0
    max_body_bytes: int = 4096


class ApiError(Exception):
    """An answer other than success: its status, a reason for people, maybe the token."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.token = status, message, token
        self.headers = headers or {}


def problem(status: int, message: str, **extra: Any) -> JSONResponse:
    body = Problem(error=message, **extra).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status)


def unavailable(what: str) -> ApiError:
    return ApiError(
        503,
        f"the Kubernetes API server is unavailable ({what}); try again",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def as_caller(call: Awaitable[T]) -> T:
    """A call made with the caller's token, its refusals turned into answers."""
    try:
        return await call
    except NotFound as error:
        raise ApiError(404, f"not found: {error}") from None
    except ApiException as error:
        if error.status == 401:
            raise ApiError(
                401, "the Kubernetes API server did not accept the bearer token", headers=BEARER
            ) from None
        if error.status == 403:
            raise ApiError(403, str(error.reason)) from None
        if error.status == 429 or (error.status or 0) >= 500:
            raise unavailable(f"HTTP {error.status}") from None
        if error.status == 422:  # a failed `test` of a patch: the caller decides
            raise
        raise ApiError(502, f"the Kubernetes API server refused: {error.reason}") from None
    except (TimeoutError, OSError, aiohttp.ClientError) as error:
        raise unavailable(type(error).__name__) from None


async def as_server(call: Awaitable[T]) -> T:
    """A read with the server's own identity; NotFound passes. A refusal means the server
    is installed without its role: 503, and the reason, for whoever installs it."""
    try:
        return await call
    except ApiException as error:
        if error.status in (401, 403):
            raise ApiError(
                503,
                f"this server's own identity may not read jobs ({error.reason}); "
                "is its role (deploy/, job-operator-api) bound?",
            ) from None
        raise unavailable(f"HTTP {error.status}") from None
    except (TimeoutError, OSError, aiohttp.ClientError) as error:
        raise unavailable(type(error).__name__) from None


ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": Problem, "description": description}
    for status, description in {
        400: "Malformed JSON body.",
        401: "No bearer token, or one the Kubernetes API server does not accept.",
        403: "The caller may not do this (reschedule: RBAC `patch` on jobs.job-operator.dev).",
        404: "No such job (or no such route).",
        413: "Body too large.",
        502: "The Kubernetes API server refused the request for another reason.",
        422: "Invalid input: an unknown field, a wrong type, a path or header out of range, "
        "or an Idempotency-Key used before with another `force`.",
        429: "Too many requests waiting for the operator; try again after Retry-After.",
        503: "Not ready yet, or the Kubernetes API server is unavailable; try again.",
        504: "The operator did not record the outcome in time; ask again with the token.",
    }.items()
}

JobId = Annotated[uuid.UUID, Path(description="Unique identifier for a job (its uid).")]
Namespace = Annotated[
    str, Path(min_length=1, max_length=63, pattern=NAMESPACE_PATTERN, description="The namespace.")
]
Name = Annotated[
    str, Path(min_length=1, max_length=253, pattern=NAME_PATTERN, description="The job's name.")
]
OptionalBody = Annotated[
    RescheduleBody | None,
    Body(description='Optional: an empty body, `{}` and `{"force": false}` are alike.'),
]
WaitFlag = Annotated[
    bool, Query(description="Wait for the operator's outcome (default); false: 202 at once.")
]
TimeoutSeconds = Annotated[
    float,
    Query(
        alias="timeoutSeconds",
        ge=0,
        description="How long to wait for the outcome (default 30; capped by the server).",
    ),
]
KeyHeader = Annotated[
    IdempotencyKey | None,
    Header(
        alias="Idempotency-Key",
        description="The request's token: a repeat returns the outcome recorded for it and "
        "reschedules nothing. Without it the server makes one (returned in this header).",
    ),
]

bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <token>`: a Kubernetes token (e.g. `kubectl create "
    "token`); the reschedule is written with it.",
)


async def caller_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> str:
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401, "a bearer token is required (Authorization: Bearer <token>)", headers=BEARER
        )
    return credentials.credentials


Token = Annotated[str, Security(caller_token)]


@dataclass(frozen=True)
class RescheduleAsk:
    """What a reschedule request asks, whichever way it names the job."""

    token: str
    body: RescheduleBody | None
    wait: bool
    timeout_seconds: float
    key: str | None


async def reschedule_ask(
    token: Token,
    body: OptionalBody = None,
    wait: WaitFlag = True,
    timeout_seconds: TimeoutSeconds = DEFAULT_TIMEOUT_SECONDS,
    idempotency_key: KeyHeader = None,
) -> RescheduleAsk:
    return RescheduleAsk(token, body, wait, timeout_seconds, idempotency_key)


Ask = Annotated[RescheduleAsk, Depends(reschedule_ask)]


def create_app(
    caller: Caller,
    reader: JobReader,
    index: JobIndex,
    settings: Settings = Settings(),
    background: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> FastAPI:
    """The application; `background` (the index's watch) runs for its lifetime."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(background()) if background else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(
        title="job-operator API",
        version="1",
        description="Reschedule a job: the seed's operation, over Kubernetes. Each write is "
        "made with the caller's bearer token, so Kubernetes RBAC decides who may.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(Instrumented)  # the outermost: it sees every answer, 413s too
    metrics.WAITING.set_function(lambda: index.waiting)

    # --- errors as JSON ----------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        response = problem(error.status, error.message, token=error.token)
        response.headers.update(error.headers)
        if error.token:
            response.headers["Idempotency-Key"] = error.token
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in error.errors()
        ]
        if any(e["type"] == "json_invalid" for e in errors):
            return problem(400, "the body is not valid JSON", errors=errors)
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem(422, f"invalid request: {reasons}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        response = problem(error.status_code, str(error.detail))
        response.headers.update(error.headers or {})
        return response

    # --- the operation -------------------------------------------------------------------

    def outcome_response(request: Request, outcome: str, job: Job, token: str) -> JSONResponse:
        result = views.seed_result(outcome, job)
        RescheduleResult.model_validate(result)  # the document's promise, kept
        request.state.outcome = outcome
        return JSONResponse(result, headers={"Idempotency-Key": token})

    async def read_job(namespace: str, name: str, uid: str | None, token: str, user: str) -> Job:
        """The job as the server reads it; 404 if gone or (by uid) replaced. By name, the
        API server says 403 rather than 404 to a caller who may not write there."""
        if not index.serves(namespace):
            raise ApiError(404, f"this server serves jobs of {index.namespaces} only")
        try:
            job = await as_server(reader.get_job(namespace, name))
        except NotFound:
            if uid is None:
                await may_write(token, namespace, name, "", user)
            raise ApiError(404, missing(namespace, name, uid)) from None
        if uid is not None and job.metadata.uid != uid:
            raise ApiError(404, missing(namespace, name, uid))
        return job

    async def may_write(token: str, namespace: str, name: str, uid: str, user: str) -> None:
        """A patch that changes nothing, as the caller: 401/403 (or 404) unless they may."""
        await as_caller(
            caller.patch_job(token, namespace, name, plan.same_job(uid), plan.field_manager(user))
        )

    async def reschedule(
        request: Request, namespace: str, name: str, uid: str | None, ask: RescheduleAsk
    ) -> Response:
        token, wait = ask.token, ask.wait
        user = await whoami(token)
        force = ask.body.force if ask.body is not None else False
        request_token = ask.key or plan.new_token()
        timeout = min(ask.timeout_seconds, settings.max_timeout_seconds)
        try:
            async with (
                index.waiter(namespace, name, request_token) if wait else _no_waiter() as waiter
            ):
                job = await read_job(namespace, name, uid, token, user)
                if waiter is not None:
                    waiter.uid = job.metadata.uid
                job, chosen = await write_request(job, request_token, force, token, user, uid)
                if chosen.recorded is not None:
                    return outcome_response(request, chosen.recorded.outcome, job, request_token)
                if waiter is None:
                    accepted = Accepted(
                        token=request_token, job_id=job.metadata.uid, namespace=namespace, name=name
                    )
                    return JSONResponse(
                        accepted.model_dump(),
                        status_code=202,
                        headers={"Idempotency-Key": request_token},
                    )
                async with asyncio.timeout(timeout):
                    job = await asyncio.shield(waiter.done)
        except plan.Refused as refused:
            raise ApiError(422, str(refused), token=request_token) from None
        except TooManyWaiting:
            raise ApiError(
                429,
                f"{index.max_waiting} requests are waiting for the operator already; try again",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            ) from None
        except TimeoutError:
            raise ApiError(
                504,
                f"the operator did not record request {request_token} on {namespace}/{name} "
                f"within {timeout:g} s; ask again with Idempotency-Key: {request_token}",
                token=request_token,
            ) from None
        except JobGone:
            raise ApiError(
                404, f"job {namespace}/{name} was deleted", token=request_token
            ) from None
        record = job.status.reschedule
        assert record is not None  # the waiter resolves only once it is recorded
        return outcome_response(request, record.outcome, job, request_token)

    async def whoami(token: str) -> str:
        try:
            return await as_caller(caller.whoami(token))
        except ApiError as error:
            if error.status == 404:  # an API server without SelfSubjectReview
                return ""
            raise

    async def write_request(
        job: Job, request_token: str, force: bool, token: str, user: str, uid: str | None
    ) -> tuple[Job, plan.Plan]:
        """Write the request with the caller's token (or, when it writes nothing, check
        that the caller may); the job as then known, and what was decided."""
        namespace, name = job.metadata.namespace or "", job.metadata.name
        for _ in range(WRITE_ATTEMPTS):
            chosen = plan.plan(job, request_token, force)
            operations = chosen.patch or plan.same_job(job.metadata.uid)
            try:
                raw = await as_caller(
                    caller.patch_job(token, namespace, name, operations, plan.field_manager(user))
                )
            except ApiException:  # 422: a `test` failed, the job changed; read it again
                job = await read_job(namespace, name, uid or job.metadata.uid, token, user)
                continue
            return (Job.model_validate(raw) if chosen.patch else job), chosen
        raise ApiError(
            503,
            f"job {namespace}/{name} kept changing under the write; try again",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    async def by_uid(job_id: uuid.UUID) -> tuple[str, str]:
        if not index.synced.is_set():
            raise ApiError(
                503,
                "not ready: the job index is still loading",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        found = index.locate(str(job_id))
        if found is None:
            raise ApiError(404, f"no job with uid {job_id}")
        return found

    reschedule_route: dict[str, Any] = {
        "response_model": RescheduleResult,
        "responses": {
            202: {"model": Accepted, "description": "Written, not waited for."},
            **ERRORS,
        },
        "description": RESCHEDULE_DESCRIPTION,
        "tags": ["jobs"],
    }

    @app.post("/v1/jobs/{job_id}/reschedule", summary="Reschedule a job", **reschedule_route)
    async def reschedule_by_uid(request: Request, job_id: JobId, ask: Ask) -> Response:
        namespace, name = await by_uid(job_id)
        return await reschedule(request, namespace, name, str(job_id), ask)

    @app.post(
        "/v1/namespaces/{namespace}/jobs/{name}/reschedule",
        summary="Reschedule a job, by namespace and name",
        **reschedule_route,
    )
    async def reschedule_by_name(
        request: Request, namespace: Namespace, name: Name, ask: Ask
    ) -> Response:
        return await reschedule(request, namespace, name, None, ask)

    async def show(namespace: str, name: str, uid: str | None, token: str) -> SeedJob:
        job = Job.model_validate(await as_caller(caller.get_job(token, namespace, name)))
        if uid is not None and job.metadata.uid != uid:
            raise ApiError(404, missing(namespace, name, uid))
        return SeedJob.model_validate(views.seed_job(job))

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=SeedJob,
        responses=ERRORS,
        summary="Get a job",
        tags=["jobs"],
    )
    async def get_by_uid(job_id: JobId, token: Token) -> SeedJob:
        namespace, name = await by_uid(job_id)
        return await show(namespace, name, str(job_id), token)

    @app.get(
        "/v1/namespaces/{namespace}/jobs/{name}",
        response_model=SeedJob,
        responses=ERRORS,
        summary="Get a job, by namespace and name",
        tags=["jobs"],
    )
    async def get_by_name(namespace: Namespace, name: Name, token: Token) -> SeedJob:
        return await show(namespace, name, None, token)

    # --- probes and metrics ------------------------------------------------------------

    @app.get("/healthz", include_in_schema=False, response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    @app.get("/readyz", include_in_schema=False, response_class=PlainTextResponse)
    async def readyz() -> PlainTextResponse:
        if index.synced.is_set():
            return PlainTextResponse("ok")
        return PlainTextResponse("the job index is still loading", status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


RESCHEDULE_DESCRIPTION: Final = """\
Puts a job back on the queue: resets it to pending and clears its executor so the operator
re-dispatches it onto a fresh cluster. By default this is a no-op for jobs already in a
terminal state (completed, cancelled, failed); a body with `force: true` reschedules a
terminal job anyway. The body is optional — an empty body keeps the default behaviour.

The response comes once the operator has recorded the outcome: `rescheduled`, or
`skipped_terminal` (left untouched because it was terminal and force was not set).

Requires write access to jobs: RBAC `patch` on `jobs.job-operator.dev`. The write is made
with the caller's own bearer token.
"""


def missing(namespace: str, name: str, uid: str | None) -> str:
    if uid is None:
        return f"job {namespace}/{name} not found"
    return f"no job with uid {uid} (it was deleted; {namespace}/{name} is another job now or none)"


@contextlib.asynccontextmanager
async def _no_waiter() -> AsyncIterator[None]:
    yield None
