"""The kopf wiring: watches that feed the controller's caches and queue, and its tasks.

kopf only watches here. Its handlers hand each event to the controller
(`Controller.job_event`, `cluster_event`), which updates its caches and queues the job's
key; the controller's workers reconcile. The in-memory API double of the unit tests
delivers its events through the same two methods. Only
`on.event` handlers are used, so kopf itself writes nothing to the objects: every API
write the operator makes is the controller's, and all of them are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf

from job_operator import metrics, names
from job_operator.controller import Controller, OperatorConfig
from job_operator.kube import PAGE_SIZE, Kube
from job_operator.sweep import list_clusters, list_jobs, sweep_forever

log = logging.getLogger("job_operator")
# kopf keeps a task and a queue for each object until its events have stopped for this
# long (default 5 s): in a storm over 10,000 jobs, 10,000 of them.
WORKER_IDLE_SECONDS = 0.2


class NoDiffBase(kopf.DiffBaseStorage):
    """Keeps and builds no diff base: only on.event handlers exist, which take no diff.

    kopf's own storage deep-copies every event's body to build one (5% of the CPU).
    """

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return kopf.BodyEssence()

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


async def start(controller: Controller, tasks: set[asyncio.Task[None]]) -> None:
    """Before kopf watches, as controller-runtime syncs its caches: list the clusters (so
    that no reconcile takes a cluster not yet seen for a lost one), start the workers,
    then list the jobs, each queued as its page arrives (and events a crash kept from
    being posted, posted); then the sweep."""
    await list_clusters(controller)
    metrics.QUEUE_DEPTH.set_function(lambda: len(controller.queue))
    loop = asyncio.get_running_loop()
    for _worker in range(controller.config.workers):
        tasks.add(loop.create_task(controller.work()))
    try:
        await list_jobs(controller)
    except Exception as error:  # kopf's watch brings the jobs all the same: say so, go on
        metrics.ERRORS.labels("repair").inc()
        log.warning("could not list the jobs at start-up: %s", error)
    tasks.add(loop.create_task(sweep_forever(controller)))


def make_registry() -> kopf.OperatorRegistry:
    """The operator's handlers, in a registry of their own (nothing global)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """Credentials from the service account in a pod, else from the kubeconfig."""
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
            **kwargs
        ) or kopf.login_with_kubeconfig(**kwargs)
        return info

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        controller: Controller = memo["controller"]
        settings.posting.enabled = False  # our events are our own; no log spam as events
        # The handlers only queue work and return (see WorkQueue): kopf's per-object
        # workers need no limit, and `--workers` sizes the operator's own pool.
        settings.queueing.worker_limit = None
        settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
        settings.watching.chunk_size = PAGE_SIZE  # list at start a page at a time, too
        # Only on.event handlers: kopf keeps no progress. Should a stateful handler ever
        # be added, its records stay under the operator's own prefix.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
        settings.persistence.diffbase_storage = NoDiffBase()
        settings.persistence.finalizer = names.FINALIZER
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        # Given namespaces (by name), kopf need not list namespaces nor watch CRDs, both
        # cluster-scoped: a Role in those namespaces is then all the operator needs
        # (deploy/overlays/namespaced; tests/integration/test_rbac.py proves it).
        namespaces = controller.config.namespaces
        settings.scanning.disabled = bool(namespaces) and not any(
            set("*?[!,") & set(ns) for ns in namespaces
        )
        await start(controller, memo["tasks"])

    @kopf.on.cleanup(registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        memo["controller"].queue.shut_down()
        for task in memo["tasks"]:
            task.cancel()

    @kopf.on.event(names.GROUP, names.VERSION, names.JOB_PLURAL, registry=registry)
    async def job_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        memo["controller"].job_event(event.get("type"), dict(event.get("object") or {}))

    @kopf.on.event(names.GROUP, names.VERSION, names.EXECUTOR_PLURAL, registry=registry)
    async def executor_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        memo["controller"].cluster_event(event.get("type"), dict(event.get("object") or {}))

    return registry


async def run_operator(
    config: OperatorConfig,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
) -> None:
    """Run the operator until `stop_flag` is set (or forever)."""
    async with Kube.connect(config.kubeconfig) as kube:
        await kopf.operator(
            registry=make_registry(),
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            memo=kopf.Memo(controller=Controller(kube, config), tasks=set()),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
