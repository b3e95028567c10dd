"""The operator's, CLI's and simulator's door to the Kubernetes API (kubernetes_asyncio).

Typed helpers over the few calls the project makes. Status writes of Jobs are
compare-and-swap: the patch carries the resourceVersion the decision was made
on, so the API server refuses it (409) if the job changed in between.
`Kube.list_then_watch` is the one list-then-watch loop (as an informer's) that the
bulk CLI, the simulator and the HTTP API follow custom objects with; the CLI's wait for
one job (`cli.wait_handled`) watches only that job, by name, until its deadline.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NoReturn, TypeVar

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from job_operator import metrics, names
from job_operator.core import Event, event_name
from job_operator.models import ExecutorCluster, Job, JobStatus, kube_time, unreadable
from job_operator.requests import request_ownership

log = logging.getLogger(__name__)
# The generated client picks a patch type from the body; custom resources need a merge patch.
AS_MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
T = TypeVar("T")
Listed = TypeVar("Listed", Job, ExecutorCluster)


PAGE_SIZE = 500
WATCH_SECONDS: Final = 300  # a watch's server-side timeout; the client gives up 30 s later
TRANSIENT_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


def lean(raw: dict[str, Any]) -> dict[str, Any]:
    """An object without its managedFields: most of its bytes, of which the operator
    reads only a Job's few entries that say who wrote a request annotation (`lean_job`)."""
    metadata = {k: v for k, v in (raw.get("metadata") or {}).items() if k != "managedFields"}
    return {**raw, "metadata": metadata}


def lean_job(raw: dict[str, Any]) -> dict[str, Any]:
    """A Job with only the managedFields entries that say who wrote a request annotation,
    and when (`requests.request_ownership`): what a reconcile reads of them."""
    metadata = dict(raw.get("metadata") or {})
    metadata["managedFields"] = request_ownership(metadata.get("managedFields") or [])
    return {**raw, "metadata": metadata}


def readable(
    model: type[Listed],
    items: Iterable[dict[str, Any]],
    shape: Callable[[dict[str, Any]], dict[str, Any]] = lean,
) -> list[Listed]:
    """The listed `items` that `model` reads, `shape`d (lean by default). One it cannot
    read (a time the API server stores but no datetime holds, year 0) is left out and
    counted in errors_total{stage="parse"}, as the watch handlers leave it: a list never
    fails on it."""
    read = (parsed(model, shape(item)) for item in items)
    return [found for found in read if found is not None]


def parsed(model: type[Listed], raw: dict[str, Any]) -> Listed | None:
    """`raw` as `model`; None if the models refuse it (a time the API server stores but no
    datetime holds, year 0), counted in errors_total{stage="parse"} and logged in a line:
    the reader leaves that object alone."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        metrics.ERRORS.labels("parse").inc()
        metadata = raw.get("metadata") or {}
        where = f"{metadata.get('namespace') or ''}/{metadata.get('name') or '?'}"
        log.warning("ignoring %s: %s", where.lstrip("/"), unreadable(error))
        return None


class Conflict(Exception):
    """The object changed since it was read (HTTP 409)."""


class NotFound(Exception):
    """The object does not exist (HTTP 404)."""


def _translate(error: ApiException) -> Exception:
    if error.status == 409:
        return Conflict(str(error.reason))
    if error.status == 404:
        return NotFound(str(error.reason))
    return error


def transient(error: BaseException) -> bool:
    """A failure that passes, as while an API server restarts: 429 or 5xx, a dropped or
    refused connection, a timeout."""
    if isinstance(error, ApiException):
        return error.status in TRANSIENT_STATUSES
    return isinstance(error, TimeoutError | OSError | aiohttp.ClientError)


def expired(error: BaseException) -> bool:
    """410 Gone: the resourceVersion (or list continue token) asked for is no longer kept."""
    return isinstance(error, ApiException) and error.status == 410


async def retry_transient(call: Callable[[], Awaitable[T]], patience: float = 60.0) -> T:
    """Retry a call through transient API failures for up to `patience` seconds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience
    delay = 0.1
    while True:
        try:
            return await call()
        except Exception as error:
            if not transient(error) or loop.time() > give_up:
                if isinstance(error, ApiException):
                    raise _translate(error) from error
                raise
            log.debug("transient API error: %s", error)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def resume_from(error: BaseException, resource_version: str) -> str:
    """Where a list-then-watch goes on after `error`: a watch again from
    `resource_version` (the last one it saw) when the connection only broke; "" (list
    again) when that version expired (410 Gone), when there is none, or after any
    other failure (a refusal, an odd answer): what happened meanwhile is read anew."""
    return resource_version if transient(error) else ""


@dataclass
class Backoff:
    """How long a list-then-watch waits before trying again: `first`, doubling up to
    `most`, from the first failure after progress (an event); but not at all before
    listing again after a watch expired, unless it failed again since without progress."""

    first: float = 0.1
    most: float = 2.0
    failures: int = 0  # since the last progress

    def progress(self) -> None:
        self.failures = 0

    def wait(self, error: BaseException) -> float:
        self.failures += 1
        if expired(error) and self.failures == 1:
            return 0.0
        return float(min(self.first * 2 ** min(self.failures - 1, 30), self.most))


def reraise(error: Exception) -> None:
    """A list-then-watch's default `on_error`: any failure it cannot retry ends it."""
    raise error


def ignore_listed(present: set[str]) -> None:
    """A list-then-watch's default `on_listed`: the caller keeps nothing to forget."""


async def new_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """A client from the given kubeconfig, $KUBECONFIG, the in-cluster account or ~/.kube."""
    configuration = await load_configuration(kubeconfig)
    api = client.ApiClient(configuration)
    # kubernetes_asyncio makes its session with trust_env=True: aiohttp then reads ~/.netrc
    # and the proxy variables in a thread on every request, a quarter of the operator's
    # CPU in a storm (docs/performance.md). load_configuration resolved the proxy once instead.
    session = api.rest_client.pool_manager
    if session.trust_env:
        session._trust_env = False
    return api


async def load_configuration(kubeconfig: str | None = None) -> client.Configuration:
    """The connection settings from the given kubeconfig, $KUBECONFIG, the in-cluster
    account or ~/.kube, with the proxy resolved once."""
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    else:
        await config.load_kube_config(config_file=path, client_configuration=configuration)
    configuration.connection_pool_maxsize = 64
    if configuration.proxy is None:  # kubeconfig's proxy-url first, else the environment's
        configuration.proxy = environment_proxy(configuration.host or "")
    return configuration


def environment_proxy(url: str) -> str | None:
    """The proxy $HTTPS_PROXY/$HTTP_PROXY names for `url`, unless $NO_PROXY exempts it."""
    proxies = urllib.request.getproxies_environment()
    parts = urllib.parse.urlsplit(url)
    if not proxies or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxies.get(parts.scheme or "https") or proxies.get("all")


class Kube:
    """The calls job-operator makes, typed with the project's models."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    @classmethod
    @asynccontextmanager
    async def connect(cls, kubeconfig: str | None = None) -> AsyncIterator[Kube]:
        api = await new_api_client(kubeconfig)
        try:
            yield cls(api)
        finally:
            await api.close()

    # --- Jobs ---------------------------------------------------------------------

    async def get_job(self, namespace: str, name: str) -> Job:
        raw = await retry_transient(
            lambda: self.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, names.JOB_PLURAL, name
            )
        )
        return Job.model_validate(raw)

    async def get_job_raw(self, namespace: str, name: str) -> dict[str, Any]:
        raw: dict[str, Any] = await retry_transient(
            lambda: self.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, names.JOB_PLURAL, name
            )
        )
        return raw

    async def write_job_status(self, job: Job, status: JobStatus) -> Job:
        """Compare-and-swap the job's status: raises Conflict if the job has changed."""
        new = status.to_api()
        # A merge patch keeps keys it does not mention: clear dropped ones explicitly.
        for key in job.status.to_api():
            new.setdefault(key, None)
        body = {"metadata": {"resourceVersion": job.metadata.resource_version}, "status": new}
        raw = await retry_transient(
            lambda: self.custom.patch_namespaced_custom_object_status(
                names.GROUP,
                names.VERSION,
                job.metadata.namespace or "",
                names.JOB_PLURAL,
                job.metadata.name,
                body,
                **AS_MERGE_PATCH,
                field_manager=names.FIELD_MANAGER,
            )
        )
        return Job.model_validate(raw)

    async def annotate_job(
        self,
        namespace: str,
        name: str,
        annotations: dict[str, str],
        field_manager: str,
        uid: str | None = None,
    ) -> Job:
        """Set annotations with a merge patch (atomic per key; retried when transient).
        With `uid`, only on that job: one made again under its name is refused (422)."""
        metadata: dict[str, Any] = {"annotations": annotations}
        if uid is not None:
            metadata["uid"] = uid
        body = {"metadata": metadata}
        raw = await retry_transient(
            lambda: self.custom.patch_namespaced_custom_object(
                names.GROUP,
                names.VERSION,
                namespace,
                names.JOB_PLURAL,
                name,
                body,
                **AS_MERGE_PATCH,
                field_manager=field_manager,
            )
        )
        return Job.model_validate(raw)

    # --- ExecutorClusters -----------------------------------------------------------

    async def create_executor(self, manifest: dict[str, Any]) -> ExecutorCluster:
        namespace = manifest["metadata"]["namespace"]
        raw = await retry_transient(
            lambda: self.custom.create_namespaced_custom_object(
                names.GROUP,
                names.VERSION,
                namespace,
                names.EXECUTOR_PLURAL,
                manifest,
                field_manager=names.FIELD_MANAGER,
            )
        )
        return ExecutorCluster.model_validate(raw)

    async def delete_executor(self, namespace: str, name: str) -> bool:
        """Delete an ExecutorCluster; False if it was already gone."""
        try:
            await retry_transient(
                lambda: self.custom.delete_namespaced_custom_object(
                    names.GROUP, names.VERSION, namespace, names.EXECUTOR_PLURAL, name
                )
            )
        except NotFound:
            return False
        return True

    async def list_executors(self, namespace: str | None = None) -> list[ExecutorCluster]:
        return [e async for page in self.executor_pages(namespace) for e in page]

    async def job_pages(self, namespace: str | None = None) -> AsyncIterator[list[Job]]:
        """All Jobs, a page at a time (so memory stays bounded), `lean_job`."""
        async for page in self._pages(names.JOB_PLURAL, namespace):
            yield readable(Job, page["items"], lean_job)

    async def job_snapshot(
        self, namespace: str | None = None, label_selector: str = ""
    ) -> tuple[list[Job], str]:
        """The Jobs matching `label_selector` (without managedFields), and the list's
        resourceVersion: a watch from it misses no change made after the list."""
        jobs: list[Job] = []
        resource_version = ""
        async for page in self._pages(names.JOB_PLURAL, namespace, label_selector):
            jobs.extend(readable(Job, page["items"]))
            resource_version = page["metadata"].get("resourceVersion") or resource_version
        return jobs, resource_version

    async def executor_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[ExecutorCluster]]:
        async for page in self._pages(names.EXECUTOR_PLURAL, namespace):
            yield readable(ExecutorCluster, page["items"])

    def _lister(
        self, plural: str, namespace: str | None
    ) -> tuple[Callable[..., Any], tuple[str, ...]]:
        """The list call of `plural` in `namespace` (None: cluster scope), and its arguments
        (the same call watches, with watch=True)."""
        if namespace is None:
            return self.custom.list_cluster_custom_object, (names.GROUP, names.VERSION, plural)
        return self.custom.list_namespaced_custom_object, (
            names.GROUP,
            names.VERSION,
            namespace,
            plural,
        )

    async def _pages(
        self, plural: str, namespace: str | None, label_selector: str = ""
    ) -> AsyncIterator[dict[str, Any]]:
        """The raw list responses, a page at a time (`items`, `metadata`)."""
        lister, arguments = self._lister(plural, namespace)

        async def page(token: str | None) -> dict[str, Any]:
            options: dict[str, Any] = {"label_selector": label_selector, "limit": PAGE_SIZE}
            if token:
                options["_continue"] = token
            raw: dict[str, Any] = await lister(*arguments, **options)
            return raw

        token: str | None = None
        while True:
            raw = await retry_transient(functools.partial(page, token))
            yield raw
            token = raw["metadata"].get("continue")
            if not token:
                return

    async def list_then_watch(
        self,
        plural: str,
        namespace: str | None,
        on_event: Callable[[str, dict[str, Any]], None],
        *,
        on_listed: Callable[[set[str]], None] = ignore_listed,
        on_error: Callable[[Exception], None] = reraise,
        resource_version: str = "",
        watch_seconds: int = WATCH_SECONDS,
        resync: bool = False,
        backoff: Backoff | None = None,
    ) -> NoReturn:
        """Follow every `plural` object in `namespace` (None: all), as an informer does,
        until cancelled: list them a page at a time (each item to `on_event` as ADDED,
        then the uids listed to `on_listed`: any other is gone), then watch from the
        list's resourceVersion, or first from `resource_version` (of a list the caller
        made). Watch events (ADDED, MODIFIED, DELETED; bookmarks only move the version
        on) go to `on_event`.

        A watch the server ends after `watch_seconds` is resumed from the last version
        seen (with `resync`, everything is listed again instead); one whose version
        expired (410 Gone) lists again. Every other failure (of a list, a watch or the
        callbacks) goes to `on_error` first, which raises to end the loop or returns to
        go on after a backoff: resumed where the connection only broke, listed again
        after anything else (`resume_from`)."""
        lister, arguments = self._lister(plural, namespace)
        scope = namespace or "all namespaces"
        pacing = backoff or Backoff()
        while True:
            try:
                if not resource_version:
                    resource_version = await self._list_into(plural, namespace, on_event, on_listed)
                async with watch.Watch() as stream:
                    async for event in stream.stream(
                        lister,
                        *arguments,
                        resource_version=resource_version,
                        allow_watch_bookmarks=True,
                        timeout_seconds=watch_seconds,
                        _request_timeout=watch_seconds + 30,  # a silently dead connection
                    ):
                        resource_version = stream.resource_version or resource_version
                        pacing.progress()
                        if event["type"] != "BOOKMARK":
                            on_event(event["type"], event["raw_object"])
                if resync:
                    resource_version = ""
            except Exception as error:
                if expired(error):
                    log.debug("the watch of %s in %s expired: listing again", plural, scope)
                else:
                    on_error(error)
                resource_version = resume_from(error, resource_version)
                await asyncio.sleep(pacing.wait(error))

    async def _list_into(
        self,
        plural: str,
        namespace: str | None,
        on_event: Callable[[str, dict[str, Any]], None],
        on_listed: Callable[[set[str]], None],
    ) -> str:
        """List for `list_then_watch`; returns the list's resourceVersion."""
        present: set[str] = set()
        resource_version = ""
        async for page in self._pages(plural, namespace):
            for item in page.get("items") or []:
                present.add((item.get("metadata") or {}).get("uid", ""))
                on_event("ADDED", item)
            resource_version = page["metadata"].get("resourceVersion") or resource_version
        on_listed(present)
        return resource_version

    async def patch_executor_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        await retry_transient(
            lambda: self.custom.patch_namespaced_custom_object_status(
                names.GROUP,
                names.VERSION,
                namespace,
                names.EXECUTOR_PLURAL,
                name,
                {"status": status},
                **AS_MERGE_PATCH,
            )
        )

    # --- Events ---------------------------------------------------------------------

    async def post_event(self, job: Job, event: Event) -> bool:
        """Record an Event on the Job, once: its name comes from the event's key, so a
        second post of the same event is refused (409) and ignored. Best effort: a
        failed post never fails a decision: False, and the caller tries again later."""
        meta = job.metadata
        namespace = meta.namespace or ""
        now = kube_time(datetime.now(UTC))
        body: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name(job, event.key), "namespace": meta.namespace},
            "involvedObject": {
                "apiVersion": names.API_VERSION,
                "kind": names.JOB_KIND,
                "name": meta.name,
                "namespace": meta.namespace,
                "uid": meta.uid,
                "resourceVersion": meta.resource_version,
            },
            "reason": event.reason,
            "message": event.message[:1024],
            "type": event.type,
            "source": {"component": names.EVENT_COMPONENT},
            "reportingComponent": names.EVENT_COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await retry_transient(
                lambda: self.core.create_namespaced_event(namespace, body), patience=10
            )
        except Conflict:
            log.debug(
                "event %s on %s/%s was already posted", event.reason, meta.namespace, meta.name
            )
        except (TimeoutError, ApiException, OSError, aiohttp.ClientError) as error:
            metrics.ERRORS.labels("event").inc()
            log.warning(
                "could not post event %s on %s/%s (will try again): %s",
                event.reason,
                meta.namespace,
                meta.name,
                error,
            )
            return False
        return True

    async def event_names(self, namespace: str | None) -> set[str]:
        """Names of the Job events in a namespace (None: all namespaces), read page by
        page as plain JSON (the client's Event models are heavy)."""

        async def page(token: str | None) -> dict[str, Any]:
            options: dict[str, Any] = {
                "field_selector": f"involvedObject.kind={names.JOB_KIND}",
                "limit": PAGE_SIZE,
                "_preload_content": False,
            }
            if token:
                options["_continue"] = token
            response: Any  # the raw HTTP response, as _preload_content=False asks
            if namespace is None:
                response = await self.core.list_event_for_all_namespaces(**options)
            else:
                response = await self.core.list_namespaced_event(namespace, **options)
            raw: dict[str, Any] = json.loads(await response.read())
            return raw

        found: set[str] = set()
        token: str | None = None
        while True:
            raw = await retry_transient(functools.partial(page, token))
            found.update(item["metadata"]["name"] for item in raw.get("items") or [])
            token = (raw.get("metadata") or {}).get("continue")
            if not token:
                return found
