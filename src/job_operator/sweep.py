"""What the watches cannot tell: the start-up view of the clusters and the jobs, clusters
gone or left behind while a watch was down, and events a crash kept from being posted.

A sweep only brings the cluster cache in line with a list and queues the jobs concerned;
their reconciles decide, as for any watch event.
"""

from __future__ import annotations

import asyncio
import logging
import time

from job_operator import core, metrics
from job_operator.cache import owner_of
from job_operator.controller import Controller, utcnow
from job_operator.workqueue import JobKey

log = logging.getLogger("job_operator")


def namespaces(controller: Controller) -> list[str | None]:
    return list(controller.config.namespaces) or [None]


async def list_clusters(controller: Controller) -> set[JobKey]:
    """Bring the cluster cache in line with a full list, a page at a time; returns the
    jobs whose clusters changed (missed by the watch, or gone unseen)."""
    changed: set[JobKey] = set()
    for namespace in namespaces(controller):
        listed_at = time.monotonic()
        present: set[tuple[JobKey, str]] = set()
        async for page in controller.api.executor_pages(namespace):
            for cluster in page:
                present.add((owner_of(cluster), cluster.metadata.name))
                if controller.clusters.remember(cluster, listed_at):
                    changed.add(owner_of(cluster))
            await asyncio.sleep(0)  # let the watches and workers run between pages
        changed |= controller.clusters.prune(present, listed_at, namespace)
    return changed


async def sweep(controller: Controller) -> None:
    """Post the events that failed, list the clusters, and queue the jobs concerned:
    those whose clusters changed unseen, and those no cached job owns (a job deleted
    while the operator was down: its reconcile reads it, and deletes its clusters)."""
    unposted, controller.unposted = controller.unposted, []
    for job, event in unposted:
        if not await controller.api.post_event(job, event):
            controller.unposted.append((job, event))
    changed = await list_clusters(controller)
    orphaned = {key for key in controller.clusters.jobs() if key not in controller.jobs}
    for key in changed | orphaned:
        controller.queue.add(key)


async def sweep_forever(controller: Controller) -> None:
    """A sweep every `--sweep-interval`; the start-up's list of clusters is the first."""
    while True:
        await asyncio.sleep(controller.config.sweep_interval)
        try:
            await sweep(controller)
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.ERRORS.labels("sweep").inc()
            log.exception("sweep failed; retrying at the next interval")


async def list_jobs(controller: Controller) -> None:
    """Fill the job cache from a full list, a page at a time, and queue every job.

    Runs at start-up, once the clusters are listed and the workers run, before kopf
    watches (controller-runtime's informers sync the same way): a request made while the
    operator was down is handled one list after start, not once kopf's watch has
    delivered every job before it, and that watch's events of the listed versions are
    known already (not parsed again). On the way, posts the events of recently handled
    requests that a crash kept from being posted (a status written, its event not yet).
    """
    since = utcnow() - controller.config.event_repair_window
    api = controller.api
    for namespace in namespaces(controller):
        posted: set[str] | None = None
        async for page in api.job_pages(namespace):
            for job in page:
                controller.job_seen(job)
                for event in core.events(job.status, since=since):
                    if posted is None:  # read only when some job has recent requests
                        posted = await api.event_names(namespace)
                    if core.event_name(job, event.key) not in posted:
                        log.info(
                            "posting the missed %s event of %s/%s",
                            event.reason,
                            job.metadata.namespace,
                            job.metadata.name,
                        )
                        if not await api.post_event(job, event):
                            controller.unposted.append((job, event))
            await asyncio.sleep(0)  # let the workers run between pages
