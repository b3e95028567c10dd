"""The HTTP API (`job-operator api`) in the benchmark: the same reschedules through it,
side by side with the annotation path, its CPU per request, and its memory with many
requests waiting at once.

The API runs as a process of its own on loopback (plain HTTP there, as it allows), as
the cluster's administrator for its own reads; callers send a bearer token (a user the
benchmark's control plane mints). A request through the API uses the tracker's token as
its Idempotency-Key, so the operator's recording of it is timed exactly as an
annotation's is; the caller's own figure is the HTTP response time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.harness import Bench, free_port
from bench.procs import ManagedProcess, job_operator_argv, memory_kib
from bench.report import mib, ms
from bench.scenarios import idle_keys, new_token, running, steady, summary
from bench.tracker import Key, Request

RESPONSE_TIMEOUT_SECONDS = 300.0


class ApiServer:
    """A `job-operator api` process for the benchmark's namespace, and a client of it."""

    def __init__(self, bench: Bench, token: str, max_waiting: int) -> None:
        self.bench = bench
        self.token = token
        self.port = free_port()
        env = dict(bench.operator.env)
        env["KUBECONFIG"] = str(bench.cluster.kubeconfig)
        argv = job_operator_argv("api", "-n", bench.plan.namespace, "--port", str(self.port))
        argv += ["--max-waiting", str(max_waiting)]
        self.process = ManagedProcess("api", argv, env, bench.workdir / "api.log")
        self.session: aiohttp.ClientSession | None = None
        self.answers: list[float] = []  # response times of `send`, seconds

    async def __aenter__(self) -> ApiServer:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=RESPONSE_TIMEOUT_SECONDS),
        )
        self.process.start()
        self.bench.extra_processes.append(self.process)
        deadline = time.monotonic() + 120
        while not await self.ready():
            if not self.process.running():
                raise RuntimeError(f"the API exited:\n{self.process.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("the API was not ready in 120 s")
            await asyncio.sleep(0.1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.bench.extra_processes.remove(self.process)
        self.process.stop()
        if self.session is not None:
            await self.session.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def ready(self) -> bool:
        assert self.session is not None
        try:
            async with self.session.get(self.url("/readyz")) as response:
                return response.status == 200
        except (aiohttp.ClientError, OSError):
            return False

    async def reschedule(self, key: Key, token: str, timeout: float = 60.0) -> int:
        """POST the reschedule of the job `key`, `token` as Idempotency-Key; the status."""
        assert self.session is not None
        namespace, name = key
        path = f"/v1/namespaces/{namespace}/jobs/{name}/reschedule?timeoutSeconds={timeout:g}"
        headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": token}
        async with self.session.post(self.url(path), headers=headers) as response:
            await response.read()
            return response.status

    async def waiting(self) -> float:
        """The API's gauge of requests waiting for the operator."""
        assert self.session is not None
        async with self.session.get(self.url("/metrics")) as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith("job_operator_api_requests_waiting "):
                return float(line.split()[1])
        return 0.0

    def memory(self) -> dict[str, int]:
        return memory_kib(self.process.pid)

    async def send(self, bench: Bench, request: Request) -> None:
        """A steady step's sender: the request through the API (acked: its answer)."""
        request.sent = time.time()
        try:
            status = await self.reschedule(request.key, request.token)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            bench.jobs.failed(request, str(error))
            return
        request.acked = time.time()
        self.answers.append(request.acked - request.sent)
        if status != 200:
            bench.jobs.failed(request, f"HTTP {status}")


async def side_by_side(
    bench: Bench, api: ApiServer, rate: float, seconds: float, keys: Any
) -> dict[str, Any]:
    """One steady rate through the annotation path, then through the API."""
    annotation = await steady(bench, rate, seconds, keys, label=f"annotation {rate:g}/s")
    api.answers = []
    through_api = await steady(bench, rate, seconds, keys, label=f"API {rate:g}/s", send=api.send)
    through_api["response"] = summary(api.answers)
    requests = through_api["requests"] or 1
    through_api["api_cpu_ms_per_request"] = through_api["cpu"].get("api", 0.0) * 1000 / requests
    return {"rate": rate, "annotation": annotation, "api": through_api}


async def many_waiting(bench: Bench, api: ApiServer, count: int) -> dict[str, Any]:
    """`count` requests waiting at once (the operator stopped), the API's memory then;
    the operator started again, the time until every one is answered."""
    namespace = bench.plan.namespace
    keys = sorted(k for k in bench.jobs.views if k[0] == namespace and bench.jobs.idle(k))
    keys = keys[:count]
    before = api.memory()
    bench.operator.stop()
    tasks = [
        asyncio.create_task(api.reschedule(k, new_token("wait"), timeout=RESPONSE_TIMEOUT_SECONDS))
        for k in keys
    ]
    deadline = time.monotonic() + 120
    while True:
        waiting = await api.waiting()
        failed_early = any(t.done() for t in tasks)  # an error: gather() below raises it
        if waiting >= len(keys) or failed_early or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    memory = api.memory()
    restarted = time.monotonic()
    await bench.start_operator()
    statuses = await asyncio.gather(*tasks)
    answered_seconds = time.monotonic() - restarted
    await bench.jobs.wait_jobs(keys, running, timeout=120 + len(keys) / 10)
    return {
        "requests": len(keys),
        "waiting_at_once": waiting,
        "memory_before_kib": before,
        "memory_waiting_kib": memory,
        "answered_200": sum(1 for s in statuses if s == 200),
        "seconds_to_answer_all_after_operator_start": answered_seconds,
    }


async def measure(
    bench: Bench, token: str, rates: list[float], progress: Callable[[str], None]
) -> dict[str, Any]:
    """Every measurement of the API: steady rates beside the annotation path, then many
    requests waiting at once."""
    plan = bench.plan
    results: dict[str, Any] = {"steady": []}
    async with ApiServer(bench, token, max_waiting=2 * plan.api_waiting) as api:
        results["memory_idle_kib"] = api.memory()
        keys = idle_keys(bench, plan.namespace)
        for rate in rates:
            progress(f"API: {rate:g}/s for {plan.rate_seconds:g} s, beside the annotation path")
            pair = await side_by_side(bench, api, rate, plan.rate_seconds, keys)
            results["steady"].append(pair)
            progress(
                f"API {rate:g}/s: response p50 {ms(pair['api']['response']['p50'])}, "
                f"annotation recorded p50 {ms(pair['annotation']['latency']['p50'])}"
            )
        count = min(plan.api_waiting, plan.population)
        progress(f"API: {count} requests waiting at once")
        results["waiting"] = await many_waiting(bench, api, count)
        rss = results["waiting"]["memory_waiting_kib"].get("VmRSS")
        progress(f"API: memory with them waiting {mib(rss)}")
    return results
