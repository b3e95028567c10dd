"""The benchmark (bench/, `make bench`) in miniature, so its code cannot rot.

Runs every measurement of `bench.run.run_all` with tiny numbers (20 jobs, one steady
rate for 2 s) against the session's cluster, and checks the results' structure and
sanity: every request handled, the counts agreeing, the figures positive. Never timing
thresholds: those are for the real benchmark on a quiet machine (docs/performance.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.client import Api, ApiError
from bench.harness import Cluster, Plan, executors_path
from bench.run import extract_revision, run_all, server_pids
from bench.startup import compare, render
from bench.tracker import jobs_path
from tests.helpers import Kube
from tests.integration.conftest import Installed

JOBS = 20
RATE = 10.0
RATE_SECONDS = 2.0
COST_JOBS = 5


@pytest.fixture
def idle_namespace(namespace: str) -> str:
    return f"{namespace}-idle"


@pytest.fixture
def cluster(kube: Kube, installed: Installed) -> Cluster:
    """The session's cluster; the operator and the simulator as their installed identities."""
    control_plane = kube.control_plane
    pids = server_pids(control_plane.data_dir) if control_plane is not None else {}
    caller = None  # the HTTP API's caller: an administrator minted on our own server
    if control_plane is not None:
        caller = control_plane.add_user("bench-api-caller", ("system:masters",)).token
    return Cluster(
        Path(kube.kubeconfig),
        kube.kubectl,
        pids,
        operator_kubeconfig=installed.operator.kubeconfig,
        simulator_kubeconfig=installed.simulator.kubeconfig,
        caller_token=caller,
    )


@pytest.fixture
def cleanup(cluster: Cluster, namespace: str, idle_namespace: str) -> Iterator[None]:
    """The benchmark's objects go with the test (the namespace fixture removes the rest)."""
    yield
    cluster.kubectl_run(
        "delete", "ceilings.bench.job-operator.dev", "--all", "-n", namespace,
        "--ignore-not-found", "--wait=false", check=False,
    )  # fmt: skip
    cluster.kubectl_run(
        "delete", "ojob,ec", "--all", "-n", idle_namespace, "--ignore-not-found",
        "--wait=false", check=False,
    )  # fmt: skip
    cluster.kubectl_run(
        "delete", "namespace", idle_namespace, "--ignore-not-found", "--wait=false", check=False
    )


async def leftovers(cluster: Cluster, namespace: str) -> int:
    """Executors not named by any job (a benchmark that leaks would show them)."""
    async with await Api.connect(cluster.kubeconfig, 2) as api:
        jobs = await api.request("GET", jobs_path(namespace))
        executors = await api.request("GET", executors_path(namespace))
    named = {(j.get("status") or {}).get("executor") for j in jobs["items"]}
    return sum(1 for e in executors["items"] if e["metadata"]["name"] not in named)


def check_batch(run: dict[str, Any], count: int, *, running: bool = True) -> None:
    assert run["requests"] == count, run
    assert run["recorded"] == count, run
    assert run["failed_writes"] == 0, run
    assert run["redispatched"] == count, run
    assert run["outcomes"] == {"rescheduled": count}, run
    if running:
        assert run["running"] == count, run
        assert run["cycle"]["p50"] > 0
        assert run["cycle"]["p50"] <= run["cycle"]["p99"] <= run["cycle"]["max"]
    latency = run["latency"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert run["throughput"] > 0
    assert run["cpu"]["wall"] > 0


async def test_the_benchmark_runs_end_to_end(
    cluster: Cluster,
    kube: Kube,
    namespace: str,
    idle_namespace: str,
    cleanup: None,
    tmp_path: Path,
) -> None:
    plan = Plan(
        storm_sizes=[JOBS],
        rates=[RATE],
        rate_seconds=RATE_SECONDS,
        ceiling_seconds=1.0,
        ceiling_objects=32,
        cost_jobs=COST_JOBS,
        cost_rate=10.0,
        namespace=namespace,
        idle_namespace=idle_namespace,
        ceiling_recheck=False,
        settle_seconds=0.5,
    )
    results = await run_all(cluster, plan, tmp_path)

    ceiling = results["ceiling"]
    assert ceiling["patches"] > 0
    assert ceiling["rate"] > 0
    assert ceiling["errors"] == 0
    assert ceiling["connections"] == plan.connections

    (population,) = results["populations"]
    assert population["created"] == JOBS
    assert population["not_running"] == 0

    (startup,) = results["startups"]
    assert startup["population"] == JOBS
    assert startup["ready_seconds"] > 0
    assert 0 < startup["first_handled_seconds"] <= startup["all_handled_seconds"]
    assert startup["memory_after_start_kib"]["VmHWM"] > 0

    (storm,) = results["storms"]
    check_batch(storm, JOBS)
    assert storm["annotate_rate"] > 0

    (steady,) = results["steady"]
    check_batch(steady, round(RATE * RATE_SECONDS))
    assert steady["rate"] == RATE

    cost = results["redispatch_cost"]
    check_batch(cost, COST_JOBS, running=False)
    assert cost["not_dispatched"] == 0

    if kube.control_plane is not None:  # the HTTP API, measured where a caller was minted
        (pair,) = results["api"]["steady"]
        check_batch(pair["annotation"], round(RATE * RATE_SECONDS))
        check_batch(pair["api"], round(RATE * RATE_SECONDS))
        response = pair["api"]["response"]
        assert 0 < response["p50"] <= response["p99"] <= response["max"]
        assert pair["api"]["api_cpu_ms_per_request"] > 0
        waiting = results["api"]["waiting"]
        assert waiting["requests"] == waiting["waiting_at_once"] == waiting["answered_200"] == JOBS
        assert waiting["memory_waiting_kib"]["VmRSS"] > 0

    assert results["memory_end_kib"]["VmHWM"] > 0
    assert results["tracker_events"] > 0

    if kube.control_plane is not None:  # our own server: its /metrics are ours alone
        for run in (storm, steady, cost):
            api = run["api"]
            assert api is not None, run["label"]
            assert api["cycles"] == run["requests"]
            # The benchmark's only writes in a batch are its annotations: one a request.
            assert api["bench_writes_per_cycle"] == pytest.approx(1.0)
            assert api["operator_writes_per_cycle"] > 0
            assert "PATCH jobs/status" in api["writes_per_cycle"]["operator"]
        assert cost["api"]["simulator_writes_per_cycle"] == 0  # no simulator there
        assert storm["api"]["simulator_writes_per_cycle"] > 0
        assert set(storm["cpu"]) >= {"operator", "simulator", "apiserver", "etcd", "bench"}

    with contextlib.suppress(ApiError):
        assert await leftovers(cluster, namespace) == 0

    results["meta"] = {
        "date": "today",
        "machine": report.machine(),
        "versions": report.versions(),
        "plan": vars(plan),
        "total_seconds": results["seconds"],
    }
    text = report.render(results)
    for heading in ("## Targets", "## Ceiling", "## Reschedule storms", "## Steady open-loop"):
        assert heading in text
    assert ("## The HTTP API" in text) is (kube.control_plane is not None)
    assert {t["target"].split()[0] for t in results["targets"]} >= {"storm", "peak", "start-up"}


async def test_the_start_up_comparison_runs(
    cluster: Cluster, namespace: str, idle_namespace: str, cleanup: None, tmp_path: Path
) -> None:
    """`python -m bench.startup` in miniature: this commit's operator, two rounds."""
    plan = Plan(storm_sizes=[JOBS], namespace=namespace, idle_namespace=idle_namespace)
    tree, commit = extract_revision("HEAD", tmp_path)
    results = await compare(cluster, plan, tmp_path, {commit: tree}, rounds=2, size=JOBS)
    runs = results["runs"]
    assert [(run["round"], run["revision"]) for run in runs] == [(1, commit), (2, commit)]
    for run in runs:
        assert run["population"] == JOBS
        assert 0 < run["first_handled_seconds"] <= run["all_handled_seconds"]
    results["meta"] = {
        "date": "today",
        "machine": report.machine(),
        "load_average_at_start": 0.0,
        "argv": f"--revs {commit}",
    }
    text = render(results)
    assert "Medians:" in text and text.count(f"| {commit} |") == 3  # two runs, one median
