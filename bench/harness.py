"""The benchmark's setting: a cluster, the operator and simulator under test, a job tracker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench import apimetrics
from bench.client import MERGE_PATCH, Api, ApiError
from bench.procs import CpuMeter, ManagedProcess, job_operator_argv, memory_kib
from bench.tracker import JobTracker, Key, jobs_path
from job_operator import core, executors, names
from job_operator.models import ExecutorCluster, Job

log = logging.getLogger("bench")
REPO = Path(__file__).resolve().parents[1]
CRD_DIRS = (REPO / "crds", REPO / "bench" / "crds")
CRD_NAMES = (
    f"{names.JOB_PLURAL}.{names.GROUP}",
    f"{names.EXECUTOR_PLURAL}.{names.GROUP}",
    "ceilings.bench.job-operator.dev",
)
BENCH_FIELD_MANAGER = "job-operator-bench"
T = TypeVar("T")


@dataclass(frozen=True)
class Cluster:
    """Where the benchmark runs: a kubeconfig, a kubectl, the server's pids if local."""

    kubeconfig: Path
    kubectl: str
    server_pids: dict[str, int] = field(default_factory=dict)  # apiserver, etcd
    # Who the operator and the simulator run as (default: `kubeconfig`'s user).
    operator_kubeconfig: Path | None = None
    simulator_kubeconfig: Path | None = None
    # A bearer token callers of the HTTP API send (None: the API is not measured).
    caller_token: str | None = None

    def kubectl_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.kubectl, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )


@dataclass
class Plan:
    """What to measure, and how much of it."""

    storm_sizes: list[int] = field(default_factory=lambda: [1000, 10000])
    rates: list[float] = field(default_factory=lambda: [10, 25, 50, 100, 200])
    rate_seconds: float = 20.0
    ceiling_seconds: float = 10.0
    ceiling_objects: int = 256
    cost_jobs: int = 200
    cost_rate: float = 50.0
    connections: int = 32
    namespace: str = "bench"
    idle_namespace: str = "bench-idle"
    provision_seconds: float = 0.0
    operator_args: list[str] = field(default_factory=list)
    # Run the operator and simulator from this source folder (a `src/` of another
    # checkout or snapshot) instead of the installed package: benchmark a pinned version.
    source_tree: str | None = None
    ceiling_recheck: bool = True
    # Once a steady rate saturates the operator, the higher ones send at most this many
    # requests (their latency then only says how long the queue grew in that time).
    saturated_step_requests: int = 600
    profile: bool = False  # py-spy the operator during the storms (if py-spy is installed)
    settle_seconds: float = 2.0
    # The HTTP API: steady rates through it, each beside the annotation path (None: the
    # rates above, up to 50/s), and how many requests wait at once for the memory figure.
    api_rates: list[float] | None = None
    api_waiting: int = 1000

    @property
    def population(self) -> int:
        return max(self.storm_sizes, default=0)


def install_crds(cluster: Cluster) -> None:
    """The project's CRDs and the benchmark's Ceiling CRD, Established."""
    for folder in CRD_DIRS:
        cluster.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(folder))
    cluster.kubectl_run(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{name}" for name in CRD_NAMES),
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run_pool(limit: int, items: Iterable[T], work: Callable[[T], Awaitable[None]]) -> None:
    """`work(item)` for every item, at most `limit` at a time."""
    queue: asyncio.Queue[T] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await work(item)

    await asyncio.gather(*(worker() for _ in range(limit)))


def executors_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{namespace}/{names.EXECUTOR_PLURAL}"
    return f"{base}/{name}" if name else base


def job_name(index: int) -> str:
    return f"job-{index:05d}"


# How the simulator keeps a job's executors Running: a run of a day, so each executor's
# driver sleeps. (`outcome: hang` would end the driver at Running, and the simulator
# would then re-read every hung executor and its job at each of its 5-minute re-lists:
# 20,000 GETs at 10,000 jobs, which stalled whatever the benchmark measured then.)
RUNNING_FOR_A_DAY = {names.SIMULATE_RUN_SECONDS_ANNOTATION: "86400"}


def job_manifest(namespace: str, name: str) -> dict[str, Any]:
    """A Job shaped like a real one, whose executors the simulator keeps Running."""
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.JOB_KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": dict(RUNNING_FOR_A_DAY),
        },
        "spec": {
            "type": "materialize-view",
            "input": {"dataset_id": 10736, "view": f"bench_{name.replace('-', '_')}"},
            "dataPlaneId": "dp-bench",
            "idempotencyKey": f"bench-{name}",
            "requestSource": {"type": "user", "companyId": "c-1", "userId": "u-1"},
        },
    }


class Bench:
    """A running setting: the operator and simulator processes, API clients, a tracker."""

    def __init__(self, cluster: Cluster, plan: Plan, workdir: Path) -> None:
        self.cluster = cluster
        self.plan = plan
        self.workdir = workdir
        self.api: Api | None = None  # the load client: `plan.connections` connections
        self.control: Api | None = None  # watches, /metrics, lists
        self.http: aiohttp.ClientSession | None = None  # the operator's endpoints
        self.metrics_port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if plan.source_tree:
            paths = [plan.source_tree, env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        operator_config = cluster.operator_kubeconfig or cluster.kubeconfig
        simulator_config = cluster.simulator_kubeconfig or cluster.kubeconfig
        namespaces = [plan.namespace, plan.idle_namespace]
        self.operator = ManagedProcess(
            "operator",
            job_operator_argv(
                "run",
                *(arg for ns in namespaces for arg in ("-n", ns)),
                "--no-leader-elect",
                "--metrics-port",
                str(self.metrics_port),
                "--metrics-address",
                "127.0.0.1",
                *plan.operator_args,
            ),
            {**env, "KUBECONFIG": str(operator_config)},
            workdir / "operator.log",
        )
        self.simulator = ManagedProcess(
            "simulator",
            job_operator_argv(
                "simulate",
                "-n",
                plan.namespace,
                "--provision-seconds",
                str(plan.provision_seconds),
                "--jitter",
                "0",
                "--seed",
                "6",
            ),
            {**env, "KUBECONFIG": str(simulator_config)},
            workdir / "simulator.log",
        )
        self.tracker: JobTracker | None = None
        self.server_metrics_ok = True
        self.extra_processes: list[ManagedProcess] = []  # measured too (e.g. the HTTP API)

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Bench:
        await self.setup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def setup(self) -> None:
        await asyncio.to_thread(install_crds, self.cluster)
        self.api = await Api.connect(self.cluster.kubeconfig, self.plan.connections)
        self.control = await Api.connect(self.cluster.kubeconfig, 8)
        self.http = aiohttp.ClientSession()
        for namespace in (self.plan.namespace, self.plan.idle_namespace):
            await self.ensure_namespace(namespace)
        self.tracker = JobTracker(self.control, [self.plan.namespace, self.plan.idle_namespace])
        await self.tracker.start()
        self.simulator.start()
        await self.start_operator()

    async def close(self) -> None:
        if self.tracker is not None:
            await self.tracker.stop()
        self.operator.stop()
        self.simulator.stop()
        for session in (self.api, self.control):
            if session is not None:
                await session.close()
        if self.http is not None:
            await self.http.close()

    async def ensure_namespace(self, namespace: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        try:
            await self.ctl.request("POST", "/api/v1/namespaces", body)
        except ApiError as error:
            if error.status != 409:
                raise

    @property
    def load(self) -> Api:
        assert self.api is not None, "setup() first"
        return self.api

    @property
    def ctl(self) -> Api:
        assert self.control is not None, "setup() first"
        return self.control

    @property
    def jobs(self) -> JobTracker:
        assert self.tracker is not None, "setup() first"
        return self.tracker

    async def start_operator(self, timeout: float = 120.0) -> float:
        """Start the operator; the seconds until its /readyz answers 200."""
        self.operator.start()
        started = time.monotonic()
        while True:
            if not self.operator.running():
                raise RuntimeError(f"the operator exited:\n{self.operator.log_tail()}")
            if await self.operator_ready():
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the operator was not ready in {timeout:g} s")
            await asyncio.sleep(0.05)

    async def operator_ready(self) -> bool:
        assert self.http is not None
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/readyz"
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                return response.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    # --- measuring ----------------------------------------------------------------------

    def cpu_meter(self) -> CpuMeter:
        pids = dict(self.cluster.server_pids)
        for process in (self.operator, self.simulator, *self.extra_processes):
            if process.running():
                pids[process.name] = process.pid
        pids["bench"] = os.getpid()
        return CpuMeter(pids)

    def operator_memory(self) -> dict[str, int]:
        return memory_kib(self.operator.pid) if self.operator.running() else {}

    async def server_totals(
        self,
    ) -> tuple[Counter[apimetrics.Key], Counter[apimetrics.ServerKey]]:
        """The API server's request counters and server-side work (empty if no /metrics)."""
        if not self.server_metrics_ok:
            return Counter(), Counter()
        try:
            text = await self.ctl.text("/metrics")
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
            log.warning("cannot read the API server's /metrics (%s): no API cost figures", error)
            self.server_metrics_ok = False
            return Counter(), Counter()
        return apimetrics.parse_request_totals(text), apimetrics.parse_server_work(text)

    async def operator_counters(self) -> dict[str, float]:
        """The operator's own Prometheus counters (job_operator_*_total), summed by name."""
        assert self.http is not None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                text = await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return {}
        counters: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("job_operator_") and "_total" in line.split(" ")[0]:
                name = line.split("{")[0].split(" ")[0]
                counters[name] = counters.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return counters

    async def count_events(self, namespace: str) -> int:
        """Events in a namespace posted by the operator."""
        listed = await self.ctl.request(
            "GET", f"/api/v1/namespaces/{namespace}/events", request_timeout=120
        )
        items = listed.get("items") or []
        return sum(
            1 for e in items if (e.get("source") or {}).get("component") == names.EVENT_COMPONENT
        )

    # --- jobs ---------------------------------------------------------------------------

    async def create_jobs(self, namespace: str, job_names: Sequence[str]) -> float:
        """Create jobs (32 at a time); the seconds it took."""
        started = time.monotonic()

        async def create(name: str) -> None:
            try:
                await self.load.request("POST", jobs_path(namespace), job_manifest(namespace, name))
            except ApiError as error:
                if error.status != 409:
                    raise

        await run_pool(self.plan.connections, job_names, create)
        return time.monotonic() - started

    async def fabricate_job(self, namespace: str, name: str) -> None:
        """One job running on its own ExecutorCluster, as operator and simulator leave it.

        The states come from the operator's core (initialise, dispatch, follow the
        executor to Running), so they are exactly what the operator would write.
        """
        try:
            raw = await self.load.request(
                "POST", jobs_path(namespace), job_manifest(namespace, name)
            )
        except ApiError as error:
            if error.status != 409:
                raise
            raw = await self.load.request("GET", jobs_path(namespace, name))
        job = Job.model_validate(raw)
        if job.status.executor:
            return
        now = datetime.now(UTC)
        job = job.model_copy(update={"status": core.initialise(job, now).status})
        executor_name = executors.new_executor_name(str(uuid.uuid4()))
        manifest = executors.executor_manifest(job, executor_name)
        created = await self.load.request("POST", executors_path(namespace), manifest)
        phase = {"phase": "Running", "message": "The cluster is running the job (simulated)."}
        await self.load.request(
            "PATCH",
            executors_path(namespace, executor_name) + "/status",
            {"status": phase},
            content_type=MERGE_PATCH,
        )
        executor = ExecutorCluster.model_validate({**created, "status": phase})
        job = job.model_copy(update={"status": core.dispatch(job, executor_name, now).status})
        status = core.follow_executor(job, executor, executor_name, core.Policy(), now).status
        await self.load.request(
            "PATCH",
            jobs_path(namespace, name) + "/status",
            {"status": status.to_api()},
            content_type=MERGE_PATCH,
        )

    async def annotate(self, key: Key, token: str) -> None:
        body = {"metadata": {"annotations": {names.RESCHEDULE_ANNOTATION: token}}}
        await self.load.request(
            "PATCH",
            jobs_path(*key),
            body,
            content_type=MERGE_PATCH,
            params={"fieldManager": BENCH_FIELD_MANAGER},
        )

    async def delete_namespace_objects(self, namespace: str) -> None:
        """Delete the benchmark's jobs and ceilings in a namespace (executors follow)."""
        for path in (
            jobs_path(namespace),
            f"/apis/bench.job-operator.dev/v1/namespaces/{namespace}/ceilings",
        ):
            with contextlib.suppress(ApiError):
                await self.ctl.request("DELETE", path, request_timeout=300)


def dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)
