"""Leader election on a Lease, against an in-memory Lease store: acquire, stand by, take
over an expired Lease, step down when renewal fails, release on a clean stop."""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

from kubernetes_asyncio.client.exceptions import ApiException

from job_operator.kube import Kube
from job_operator.leader import LeaderElector, LeaseConfig


class Leases:
    """The three Lease calls LeaderElector makes, with the API server's 404 and 409s."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False  # the API server unreachable

    def _check(self) -> None:
        if self.down:
            raise ApiException(status=503)

    async def get_namespaced_custom_object(self, *_: Any) -> dict[str, Any]:
        self._check()
        if self.lease is None:
            raise ApiException(status=404)
        return copy.deepcopy(self.lease)

    async def create_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        self._check()
        if self.lease is not None:
            raise ApiException(status=409)
        return self._store(args[-1])

    async def replace_namespaced_custom_object(self, *args: Any) -> dict[str, Any]:
        self._check()
        body = args[-1]
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str:
        return str(((self.lease or {}).get("spec") or {}).get("holderIdentity") or "")


class FakeKube:
    def __init__(self, leases: Leases) -> None:
        self.custom = leases


def elector(leases: Leases, identity: str, duration: float = 0.3) -> LeaderElector:
    config = LeaseConfig(namespace="ops", name="job-operator", identity=identity, duration=duration)
    return LeaderElector(cast(Kube, FakeKube(leases)), config)


async def test_the_first_replica_creates_the_lease_and_leads() -> None:
    leases = Leases()
    assert await elector(leases, "a").try_acquire_or_renew()
    assert leases.holder == "a"
    assert leases.lease is not None and leases.lease["spec"]["leaseTransitions"] == 0


async def test_a_second_replica_stands_by_while_the_leader_renews() -> None:
    leases = Leases()
    a, b = elector(leases, "a"), elector(leases, "b")
    assert await a.try_acquire_or_renew()
    for _ in range(3):
        assert not await b.try_acquire_or_renew()
        assert await a.try_acquire_or_renew()  # renewed: b sees the renewTime move
        await asyncio.sleep(0.12)
    assert leases.holder == "a"


async def test_a_standby_takes_over_once_the_leader_stops_renewing() -> None:
    leases = Leases()
    a, b = elector(leases, "a"), elector(leases, "b")
    assert await a.try_acquire_or_renew()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(b.acquire(stop), timeout=3)
    assert loop.time() - started >= 0.3  # not before the lease duration
    assert leases.holder == "b"
    assert leases.lease is not None and leases.lease["spec"]["leaseTransitions"] == 1


async def test_a_leader_that_cannot_renew_steps_down() -> None:
    leases = Leases()
    a = elector(leases, "a")
    assert await a.try_acquire_or_renew()
    leases.down = True
    stepped_down = asyncio.Event()
    await asyncio.wait_for(a.keep(stepped_down), timeout=3)
    assert stepped_down.is_set() and a.lost


async def test_a_leader_whose_lease_was_taken_steps_down_at_once() -> None:
    leases = Leases()
    a = elector(leases, "a")
    assert await a.try_acquire_or_renew()
    assert leases.lease is not None
    leases.lease["spec"]["holderIdentity"] = "intruder"
    leases.version += 1
    leases.lease["metadata"]["resourceVersion"] = str(leases.version)
    stepped_down = asyncio.Event()
    await asyncio.wait_for(a.keep(stepped_down), timeout=3)
    assert a.lost


async def test_a_released_lease_is_taken_at_once() -> None:
    leases = Leases()
    a, b = elector(leases, "a", duration=60), elector(leases, "b", duration=60)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert leases.holder == ""
    assert await b.try_acquire_or_renew()
    assert leases.holder == "b"


async def test_a_stopped_standby_gives_up_waiting() -> None:
    leases = Leases()
    assert await elector(leases, "a", duration=60).try_acquire_or_renew()
    stop = asyncio.Event()
    stop.set()
    assert not await elector(leases, "b", duration=60).acquire(stop)
