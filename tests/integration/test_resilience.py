"""Nothing lost, nothing done twice: the operator crashing, the API server or etcd
restarting, two replicas — during storms of reschedule requests."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Callable

import pytest

from job_operator.kube import Kube as Api
from tests.helpers import Kube, async_wait_for
from tests.integration.conftest import SWEEP_INTERVAL, Operator, Process
from tests.integration.storm import Storm, cluster_ledger, during
from tests.invariants import ClusterLedger, Snapshot, check_invariants

SEED = int(os.environ.get("JOB_OPERATOR_CHAOS_SEED", "20261129"))
# How long no request may get a second event once the invariants hold: a few sweeps (which
# post events a failed post left unposted) and reconcile retries.
LATE_EVENT_GRACE = 4 * SWEEP_INTERVAL


@pytest.fixture
async def api(kube: Kube) -> AsyncIterator[Api]:
    async with Api.connect(str(kube.kubeconfig)) as client:
        yield client


async def settled_invariants(storm: Storm, ledger: ClusterLedger | None) -> None:
    """Wait (with a deadline) until the invariants hold, and the audit log's account of the
    clusters agrees with them; fail with the last breaches. Then no request may get a
    second event for a while (a late duplicate), and no job may have had two clusters for
    one attempt at any moment of the storm."""
    last: list[str] = []
    settled: Snapshot | None = None

    async def holds() -> bool:
        nonlocal last, settled
        snapshot = await storm.snapshot()
        last = check_invariants(snapshot, storm.tokens).violations
        if ledger is not None:
            last += ledger.agrees_with(snapshot.executors)
        settled = snapshot
        return not last

    try:
        await async_wait_for(holds, timeout=60, interval=1.0, description="the invariants")
    except AssertionError:
        pytest.fail("invariants broken:\n" + "\n".join(last[:40]), pytrace=False)
    assert settled is not None
    late = await storm.late_request_events(settled, grace=LATE_EVENT_GRACE)
    assert not late, "late duplicate events:\n" + "\n".join(late[:40])
    assert_no_duplicate_clusters(ledger)


def assert_no_duplicate_clusters(ledger: ClusterLedger | None) -> None:
    """Checked as the storm goes (each round), not only once it has settled."""
    if ledger is not None:
        violations = ledger.violations()
        assert not violations, "\n".join(violations[:40])


async def test_sigkill_during_a_storm_loses_and_duplicates_nothing(
    kube: Kube,
    namespace: str,
    api: Api,
    operator: Operator,
    simulator: Process,
) -> None:
    rng = random.Random(SEED)
    storm = Storm(kube, api, namespace)
    async with cluster_ledger(kube, namespace) as ledger:
        storm.create(240)
        await storm.settle_dispatch()
        kills = 0
        for round_ in range(3):

            async def chaos() -> None:
                nonlocal kills
                for _ in range(2):
                    await asyncio.sleep(rng.uniform(0.05, 1.5))  # a random moment, not a wait
                    operator.kill()
                    kills += 1
                    operator.start()

            await during(storm.request_round(f"r{round_}"), chaos)
            await storm.wait_handled()
            assert_no_duplicate_clusters(ledger)
        assert kills == 6 and operator.starts == 7
        await settled_invariants(storm, ledger)


@pytest.mark.parametrize("part", ["apiserver", "etcd"])
async def test_control_plane_restart_during_a_storm(
    kube: Kube,
    namespace: str,
    api: Api,
    operator: Operator,
    simulator: Process,
    part: str,
) -> None:
    if kube.control_plane is None:
        pytest.skip("restarting the API server or etcd needs the suite's own control plane")
    control_plane = kube.control_plane
    restart: Callable[[], None] = (
        control_plane.restart_apiserver if part == "apiserver" else control_plane.restart_etcd
    )
    storm = Storm(kube, api, namespace)
    async with cluster_ledger(kube, namespace) as ledger:
        storm.create(80)
        await storm.settle_dispatch()
        for round_ in range(2):

            async def chaos() -> None:
                await asyncio.sleep(0.3)  # a moment into the round, not a wait
                await asyncio.to_thread(restart)

            # The storm's own writes retry through the outage, as the operator's do.
            await during(storm.request_round(f"{part}{round_}"), chaos)
            await storm.wait_handled()
            assert_no_duplicate_clusters(ledger)
        assert operator.running()
        await settled_invariants(storm, ledger)


async def test_two_replicas_one_acts_and_the_other_takes_over(
    kube: Kube,
    namespace: str,
    api: Api,
    make_operator: Callable[..., Operator],
    simulator: Process,
    leases: None,
) -> None:
    first = make_operator(leader_elect=True)
    second = make_operator(leader_elect=True)
    first.start_and_wait()
    second.start_and_wait()
    storm = Storm(kube, api, namespace)
    async with cluster_ledger(kube, namespace) as ledger:
        storm.create(60)
        await storm.settle_dispatch()
        snapshot = await storm.snapshot()
        for job in snapshot.jobs:  # dispatched exactly once: attempt 1, one cluster
            assert job["status"]["attempt"] == 1, job["metadata"]["name"]
        assert len(snapshot.executors) == len(snapshot.jobs)
        leader, standby = (first, second) if "leader" in first.health() else (second, first)
        assert "standby" in standby.health()
        await storm.request_round("before")
        await storm.wait_handled()
        assert_no_duplicate_clusters(ledger)
        leader.kill()
        await async_wait_for(
            lambda: asyncio.to_thread(lambda: "leader" in standby.health()),
            timeout=30,
            description="the standby taking over",
        )
        await storm.request_round("after")
        await storm.wait_handled(timeout=120)
        await settled_invariants(storm, ledger)
