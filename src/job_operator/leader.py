"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does.

Several replicas may run; the one holding the Lease acts. Every Lease write is a
compare-and-swap on its resourceVersion. Expiry is judged by the local clock
since the holder's last observed renewal (never by comparing clocks across
machines). The leader renews every `retry_period`; if it cannot renew within
`renew_deadline` it steps down, and its process exits so nothing acts twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from job_operator import metrics
from job_operator.kube import Kube
from job_operator.models import rfc3339

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "coordination.k8s.io", "v1", "leases"


@dataclass
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    duration: float = 15.0

    @property
    def renew_deadline(self) -> float:
        return self.duration * 2 / 3

    @property
    def retry_period(self) -> float:
        return self.duration / 5


class LeaderElector:
    """Acquires, keeps and releases one Lease for one identity."""

    def __init__(self, kube: Kube, config: LeaseConfig) -> None:
        self.kube = kube
        self.config = config
        self.lost = False
        self._observed: tuple[Any, Any] | None = None
        self._observed_at = 0.0

    def _spec(self, transitions: int, acquire_time: str | None = None) -> dict[str, Any]:
        now = rfc3339(datetime.now(UTC))
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": int(self.config.duration),
            "acquireTime": acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One round: True if this identity holds the Lease afterwards."""
        c = self.config
        loop = asyncio.get_running_loop()
        api = self.kube.custom
        try:
            lease = await api.get_namespaced_custom_object(
                GROUP, VERSION, c.namespace, PLURAL, c.name
            )
        except ApiException as error:
            if error.status != 404:
                raise
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Lease",
                "metadata": {"name": c.name, "namespace": c.namespace},
                "spec": self._spec(0),
            }
            try:
                await api.create_namespaced_custom_object(GROUP, VERSION, c.namespace, PLURAL, body)
            except ApiException as create_error:
                if create_error.status == 409:
                    return False
                raise
            self._observed_at = loop.time()
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        observed = (holder, spec.get("renewTime"))
        if observed != self._observed:
            self._observed, self._observed_at = observed, loop.time()
        duration = float(spec.get("leaseDurationSeconds") or c.duration)
        expired = not holder or loop.time() - self._observed_at > duration
        if holder != c.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == c.identity:
            new_spec = self._spec(transitions, spec.get("acquireTime"))
        else:
            new_spec = self._spec(transitions + 1)
        lease["spec"] = new_spec
        try:
            await api.replace_namespaced_custom_object(
                GROUP, VERSION, c.namespace, PLURAL, c.name, lease
            )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        self._observed = (c.identity, new_spec["renewTime"])
        self._observed_at = loop.time()
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this identity leads (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    log.info(
                        "became leader (%s/%s as %s)",
                        self.config.namespace,
                        self.config.name,
                        self.config.identity,
                    )
                    return True
            except (ApiException, OSError, TimeoutError) as error:
                metrics.ERRORS.labels("lease").inc()
                log.warning("leader election: %s", error)
            if not announced:
                log.info(
                    "standing by: %s/%s is held by another replica",
                    self.config.namespace,
                    self.config.name,
                )
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.retry_period)
        return False

    async def keep(self, stepped_down: asyncio.Event) -> None:
        """Renew until renewal fails for longer than the renew deadline; then step down."""
        loop = asyncio.get_running_loop()
        last_renewal = loop.time()
        while not stepped_down.is_set():
            try:
                await asyncio.wait_for(stepped_down.wait(), self.config.retry_period)
                return
            except TimeoutError:
                pass
            try:
                if await self.try_acquire_or_renew():
                    last_renewal = loop.time()
                    continue
                log.error("leader election: the Lease was taken by another replica")
            except (ApiException, OSError, TimeoutError) as error:
                metrics.ERRORS.labels("lease").inc()
                log.warning("leader election: renewal failed: %s", error)
                if loop.time() - last_renewal < self.config.renew_deadline:
                    continue
            self.lost = True
            stepped_down.set()
            return

    async def release(self) -> None:
        """Give the Lease up on a clean stop, so a standby takes over at once."""
        c = self.config
        try:
            lease = await self.kube.custom.get_namespaced_custom_object(
                GROUP, VERSION, c.namespace, PLURAL, c.name
            )
            if (lease.get("spec") or {}).get("holderIdentity") != c.identity:
                return
            lease["spec"]["holderIdentity"] = ""
            await self.kube.custom.replace_namespaced_custom_object(
                GROUP, VERSION, c.namespace, PLURAL, c.name, lease
            )
            log.info("released the leader Lease")
        except (ApiException, OSError, TimeoutError) as error:
            log.warning("could not release the leader Lease: %s", error)
